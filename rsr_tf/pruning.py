"""Magnitude pruning with tfmot: schedules, wrapping, stripping, measured sparsity."""

import rsr_tf  # noqa: F401
import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from rsr_tf import layers as rsr_layers

_sparsity = tfmot.sparsity.keras


def kernels(model):
  """{layer name: kernel variable} of every prunable (noisy) layer."""
  return {layer.name: layer.kernel for layer in rsr_layers.noisy_layers(model)}


def measured_sparsity(model):
  """Fraction of exactly-zero weights, counted on the kernels themselves.

  Args:
    model: a stripped (or still wrapped) model.

  Returns:
    {"overall": zeros / weights over all prunable kernels,
     "per_layer": {name: fraction}, "zeros": int, "weights": int,
     "all_parameters": zeros / size over every trainable and non-trainable
     parameter, alphas and batch norm included}.
  """
  per_layer, zeros, total = {}, 0, 0
  for name, kernel in kernels(model).items():
    values = kernel.numpy()
    layer_zeros = int(np.count_nonzero(values == 0))
    per_layer[name] = layer_zeros / values.size
    zeros += layer_zeros
    total += values.size
  all_values = [w for w in model.get_weights() if w.size]
  all_zeros = sum(int(np.count_nonzero(w == 0)) for w in all_values)
  all_size = sum(w.size for w in all_values)
  return {"overall": zeros / max(total, 1), "per_layer": per_layer,
          "zeros": zeros, "weights": total,
          "all_parameters": all_zeros / max(all_size, 1)}


def global_magnitude_sparsities(model, target_sparsity):
  """Per-layer sparsities from one magnitude threshold across all layers.

  This is RSR's one-shot, unstructured, global pruning: the `target_sparsity`
  fraction of smallest |w| over every prunable kernel goes, so layers whose
  weights the lasso already pushed to zero lose the most.

  Returns:
    {layer name: fraction of that layer's weights at or below the threshold}.
  """
  if not 0 <= target_sparsity < 1:
    raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity}")
  magnitudes = {name: np.abs(k.numpy()).ravel() for name, k in kernels(model).items()}
  if not magnitudes:
    raise ValueError(f"model {model.name!r} has no prunable layers")
  everything = np.sort(np.concatenate(list(magnitudes.values())))
  prune_count = int(round(target_sparsity * everything.size))
  if prune_count == 0:
    return {name: 0.0 for name in magnitudes}
  threshold = everything[prune_count - 1]
  sparsities = {}
  for name, values in magnitudes.items():
    # tfmot rejects 1.0; a layer cannot vanish entirely.
    fraction = np.count_nonzero(values <= threshold) / values.size
    sparsities[name] = float(min(fraction, 1.0 - 1.0 / values.size))
  return sparsities


def constant_schedules(sparsities, frequency):
  """ConstantSparsity per layer, first applied on the first training call.

  tfmot's step is 1 on the first `training=True` call, so `begin_step=1`
  prunes at once instead of after `frequency` calls.
  """
  return {name: _sparsity.ConstantSparsity(s, begin_step=1, frequency=frequency)
          for name, s in sparsities.items()}


def polynomial_schedule(target_sparsity, begin_step, end_step, frequency):
  """tfmot PolynomialDecay from 0 that lands exactly on its target.

  tfmot only updates masks on steps where (step - begin) % frequency == 0,
  so the end step is pulled back onto that grid; otherwise the last update
  would fall short of the target.
  """
  span = max(end_step - begin_step, 1)
  frequency = max(1, min(frequency, span))
  end_step = begin_step + frequency * (span // frequency)
  return _sparsity.PolynomialDecay(
      initial_sparsity=0.0, final_sparsity=target_sparsity,
      begin_step=begin_step, end_step=end_step, frequency=frequency)


def prune(model, schedules):
  """Wraps each prunable layer of `model` in tfmot's PruneLowMagnitude.

  Args:
    model: a functional model built by `rsr_tf.models.build`.
    schedules: one `PruningSchedule` for every layer, or {layer name: schedule}.

  Returns:
    A new functional model that shares the original layers (and weights).
  """
  def wrap(layer):
    if not isinstance(layer, rsr_layers.NOISY_LAYER_TYPES):
      return layer
    schedule = schedules.get(layer.name) if isinstance(schedules, dict) else schedules
    if schedule is None:
      return layer
    # The wrapper takes the layer's own dtype policy: under a mixed policy a
    # float32 layer (the logits) would otherwise get a bfloat16 mask op.
    return _sparsity.prune_low_magnitude(layer, pruning_schedule=schedule,
                                         dtype=layer.dtype_policy)

  return keras.models.clone_model(model, clone_function=wrap)


def strip(model):
  """Removes the pruning wrappers; kernels keep their zeros."""
  return _sparsity.strip_pruning(model)


def is_pruned(model):
  """Whether any noisy layer of `model` sits in a pruning wrapper."""
  # tfmot keeps PruneLowMagnitude out of its public API; the only wrappers
  # this project puts around noisy layers are pruning wrappers.
  return any(isinstance(layer, keras.layers.Wrapper)
             and isinstance(layer.layer, rsr_layers.NOISY_LAYER_TYPES)
             for layer in model.layers)


def callbacks():
  """Callbacks without which a pruned model fails at its first step."""
  return [_sparsity.UpdatePruningStep()]
