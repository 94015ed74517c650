"""Pruning: global one-shot thresholds, schedules, stripping, measured sparsity."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from helpers import colour_data, tiny_model
from rsr_tf import config as config_lib
from rsr_tf import layers as rsr_layers
from rsr_tf import pruning
from rsr_tf import training


def _fit(model, epochs=1, adversarial=True):
  images, labels = colour_data(64)
  ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
  trainer = training.RSRTrainer(model, steps=2, adversarial=adversarial)
  trainer.compile(optimizer=training.sgd(0.01, 0.9))
  trainer.fit(ds, epochs=epochs, verbose=0, callbacks=pruning.callbacks())
  return trainer


def test_global_threshold_gives_each_layer_its_share():
  model = tiny_model()
  sizes = {}
  for i, (name, kernel) in enumerate(pruning.kernels(model).items()):
    # Layer i holds magnitudes i, i + 1, ...: the smallest values sit in layer 0.
    values = np.arange(kernel.shape.num_elements(), dtype=np.float32) + 1000 * i
    kernel.assign(values.reshape(kernel.shape))
    sizes[name] = values.size
  target = sizes["conv1"] / sum(sizes.values())
  sparsities = pruning.global_magnitude_sparsities(model, target)
  assert sparsities["conv1"] == pytest.approx(1 - 1 / sizes["conv1"])  # capped below 1
  assert sparsities["conv2"] == 0.0 and sparsities["head"] == 0.0


@pytest.mark.parametrize("target", [0.5, 0.85])
def test_oneshot_reaches_target_on_the_stripped_model_and_spares_alphas(target):
  model = tiny_model()
  sparsities = pruning.global_magnitude_sparsities(model, target)
  pruned = pruning.prune(model, pruning.constant_schedules(sparsities, 100))
  alphas_before = [a.numpy().copy() for a in rsr_layers.alphas(pruned)]
  _fit(pruned)
  stripped = pruning.strip(pruned)
  assert not pruning.is_pruned(stripped)
  measured = pruning.measured_sparsity(stripped)
  assert measured["overall"] == pytest.approx(target, abs=0.01)
  for name, s in sparsities.items():
    assert measured["per_layer"][name] == pytest.approx(s, abs=0.01)
  alphas_after = [a.numpy() for a in rsr_layers.alphas(stripped)]
  assert all(np.count_nonzero(a == 0) == 0 for a in alphas_after)
  assert any(not np.allclose(a, b) for a, b in zip(alphas_before, alphas_after)), \
      "alphas keep training"


def test_polynomial_schedule_lands_on_its_target():
  model = tiny_model()
  # 4 batches x 2 training calls x 2 epochs = 16 calls; tfmot counts from 1.
  schedule = pruning.polynomial_schedule(0.7, begin_step=1, end_step=12,
                                         frequency=5)
  assert (schedule.end_step - schedule.begin_step) % schedule.frequency == 0
  pruned = pruning.prune(model, schedule)
  _fit(pruned, epochs=2)
  measured = pruning.measured_sparsity(pruning.strip(pruned))["overall"]
  assert measured == pytest.approx(0.7, abs=0.01)


def test_training_calls_advance_the_pruning_step_twice_per_adversarial_step():
  pruned = pruning.prune(tiny_model(), pruning.constant_schedules(
      {"conv1": 0.5}, 100))
  trainer = _fit(pruned)
  wrapper = next(l for l in pruned.layers if hasattr(l, "pruning_step"))
  assert trainer.training_calls_per_step() == 2
  assert int(wrapper.pruning_step) == 4 * 2


def test_measured_sparsity_counts_zeros():
  model = tiny_model()
  kernel = pruning.kernels(model)["head"]
  kernel.assign(np.zeros(kernel.shape, np.float32))
  measured = pruning.measured_sparsity(model)
  assert measured["per_layer"]["head"] == 1.0
  assert measured["per_layer"]["conv1"] == 0.0
  assert measured["zeros"] == kernel.shape.num_elements()


def test_target_outside_range_is_rejected():
  with pytest.raises(ValueError, match="target_sparsity"):
    pruning.global_magnitude_sparsities(tiny_model(), 1.0)


def test_attacking_the_stripped_view_equals_attacking_the_wrapped_model():
  """The trainer's attack skips tfmot's wrappers; same variables, same result."""
  from rsr_tf import attacks
  pruned = pruning.prune(tiny_model(), pruning.constant_schedules(
      pruning.global_magnitude_sparsities(tiny_model(), 0.5), 100))
  _fit(pruned)  # masks computed and applied
  view = pruning.strip(pruned)
  x, y = colour_data(16)
  results = []
  for model in (pruned, view):
    tf.random.set_seed(3)
    results.append(attacks.pgd(attacks.inference_fn(model), tf.constant(x), y,
                               eps=8 / 255, step_size=2 / 255, steps=3).numpy())
  np.testing.assert_array_equal(results[0], results[1])
  assert view.layers[1].kernel is rsr_layers.noisy_layers(pruned)[0].kernel
