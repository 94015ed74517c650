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


@pytest.mark.parametrize("shape", [(28, 28, 1), (40, 24, 3), (64, 64, 1)])
def test_builtins_take_any_image_shape(shape):
  model = models.build("resnet20", num_classes=5, input_shape=shape)
  assert model.input_shape == (None, *shape) and model.output_shape == (None, 5)
  assert model.get_layer("normalize").mean.shape[-1] == shape[-1]


def test_vgg16_refuses_images_below_32x32_in_one_line():
  with pytest.raises(ValueError, match="vgg16 needs images of at least 32x32, "
                     "got 28x28") as info:
    models.build("vgg16", input_shape=(28, 28, 1))
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match="mean has 3 values for 1-channel"):
    models.build("resnet20", input_shape=(32, 32, 1), mean=(0.5,) * 3)


def test_from_spec_takes_a_saved_model_and_makes_it_noisy(tmp_path):
  import numpy as np  # noqa: E402
  import user_models  # noqa: E402
  path = str(tmp_path / "mine.keras")
  original = user_models.gray_5_class()
  original.save(path)
  noisy = models.from_spec(path, (28, 28, 1), 5, noise="channel")
  assert len(rsr_layers.alphas(noisy)) == 3
  rsr_layers.set_noise_enabled(noisy, False)
  x = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype("float32")
  np.testing.assert_allclose(noisy(x).numpy(), original(x).numpy(), atol=1e-6)
  plain = models.from_spec(path, (28, 28, 1), 5, noise="none")
  assert not rsr_layers.alphas(plain)
  with pytest.raises(ValueError, match=r"takes inputs of shape \[28, 28, 1\] but "
                     r"the images are \[32, 32, 3\]"):
    models.from_spec(path, (32, 32, 3), 5)
  with pytest.raises(ValueError, match="the data has 3 classes"):
    models.from_spec(path, (28, 28, 1), 3)
  with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
    models.from_spec("no_such_module:f", (28, 28, 1), 5)
