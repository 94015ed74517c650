"""The model registry."""

import pytest
import tensorflow as tf

from rsr_tf import layers as rsr_layers
from rsr_tf import models


@pytest.mark.parametrize("name,params,noisy", [
    ("resnet20", (0.26e6, 0.28e6), 20),
    ("resnet18", (11.1e6, 11.3e6), 21),
    ("vgg16", (14.6e6, 14.8e6), 14),
])
def test_registry_builds_known_models(name, params, noisy):
  model = models.build(name, num_classes=10, noise="none")
  assert params[0] < model.count_params() < params[1]
  assert len(rsr_layers.noisy_layers(model)) == noisy
  assert model.output_shape == (None, 10)


def test_unknown_model_lists_known_names():
  with pytest.raises(ValueError, match="resnet18, resnet20, vgg16"):
    models.build("resnet50")


def test_normalisation_is_inside_the_model():
  model = models.build("resnet20", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
  normalize = model.get_layer("normalize")
  out = normalize(tf.fill((1, 2, 2, 3), 0.75))
  assert abs(float(tf.reduce_mean(out)) - 1.0) < 1e-5


def test_logits_stay_float32_under_mixed_precision():
  import tf_keras as keras
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = models.build("resnet20")
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert model.output.dtype == tf.float32
  assert model.get_layer("stem_conv").compute_dtype == "bfloat16"
