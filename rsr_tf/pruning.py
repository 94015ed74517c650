"""Magnitude pruning with tfmot: schedules, wrapping, stripping, measured sparsity."""

import logging

import rsr_tf  # noqa: F401
import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from rsr_tf import convert
from rsr_tf import layers as rsr_layers

_sparsity = tfmot.sparsity.keras
_LOG = logging.getLogger("rsr_tf")


def _is_wrapper(layer):
  # tfmot keeps PruneLowMagnitude out of its public API; its wrappers are
  # the Keras Wrappers that hold pruning variables.
  return isinstance(layer, keras.layers.Wrapper) and hasattr(layer, "pruning_vars")


def _is_prunable(layer):
  """Conv2D, DepthwiseConv2D and Dense (exact types) and their noisy twins."""
  return (type(layer) in rsr_layers.NOISY_TWINS
          or isinstance(layer, rsr_layers.NOISY_LAYER_TYPES))


def _walk(model):
  """Every layer of `model`, inside pruning wrappers and sub-models."""
  for layer in model.layers:
    inner = layer.layer if _is_wrapper(layer) else layer
    if isinstance(inner, keras.Model):
      yield from _walk(inner)
    else:
      yield inner


def kernel_of(layer):
  """The weight of a prunable `layer` that is pruned and regularised."""
  if isinstance(layer, rsr_layers.NOISY_LAYER_TYPES):
    return layer.noisy_weight
  # A plain layer's kernel sits where its noisy twin's does.
  return getattr(layer, rsr_layers.NOISY_TWINS[type(layer)].KERNEL_ATTRIBUTE)


def prunable_layers(model):
  """Every Conv2D, DepthwiseConv2D and Dense layer of `model`, noisy or not."""
  return [layer for layer in _walk(model) if _is_prunable(layer)]


def kernels(model):
  """{layer name: kernel variable} of every prunable layer."""
  return {layer.name: kernel_of(layer) for layer in prunable_layers(model)}


def left_dense(model):
  """Layers that hold a kernel (a trainable weight of 2+ axes) pruning skips."""
  return [layer for layer in _walk(model)
          if not _is_prunable(layer) and convert.holds_kernel(layer)]


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


def fixed_schedules(sparsities):
  """Per-layer masks set on the first training call and never changed after.

  The paper fine-tunes a fixed sparse network. tfmot's ConstantSparsity
  would recompute each mask from the current magnitudes every `frequency`
  calls, so weights could move in and out of the pruned set; a range of one
  step (begin = end = 1) computes it once.
  """
  return {name: _sparsity.ConstantSparsity(s, begin_step=1, end_step=1,
                                           frequency=1)
          for name, s in sparsities.items()}


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

  Prunable layers are Conv2D, DepthwiseConv2D and Dense, noisy or not. A
  plain DepthwiseConv2D, whose kernel tfmot's registry does not prune, is
  replaced by a `NoisyDepthwiseConv2D` without noise holding its weights.

  Args:
    model: a Sequential or functional tf_keras model.
    schedules: one `PruningSchedule` for every layer, or {layer name: schedule}.

  Returns:
    A new model that shares the original layers (and weights).
  """
  def wrap(layer):
    if isinstance(layer, keras.Model):
      return keras.models.clone_model(layer, clone_function=wrap)
    if not _is_prunable(layer):
      return layer
    schedule = schedules.get(layer.name) if isinstance(schedules, dict) else schedules
    if schedule is None:
      return layer
    if type(layer) is keras.layers.DepthwiseConv2D:
      layer = _prunable_depthwise(layer)
    # The wrapper takes the layer's own dtype policy: under a mixed policy a
    # float32 layer (the logits) would otherwise get a bfloat16 mask op.
    return _sparsity.prune_low_magnitude(layer, pruning_schedule=schedule,
                                         dtype=layer.dtype_policy)

  return keras.models.clone_model(model, clone_function=wrap)


def _prunable_depthwise(layer):
  twin = rsr_layers.NoisyDepthwiseConv2D.from_config(
      {**layer.get_config(), "noise": "none"})
  twin.build(layer.get_input_shape_at(0))
  twin.set_weights(layer.get_weights())
  return twin


def prune_global(model, target_sparsity):
  """RSR's one-shot prune: one magnitude threshold over every kernel, masks fixed.

  The `target_sparsity` fraction of smallest |w| over all Conv2D,
  DepthwiseConv2D and Dense kernels (noisy or not) is set to zero now, and
  the masks stay as they are through any later training. Layers that hold
  a kernel but cannot be pruned are named in one warning line.

  Args:
    model: a Sequential or functional tf_keras model (not yet pruned).
    target_sparsity: fraction in [0, 1) of the kernels' weights to remove.

  Returns:
    The model in tfmot pruning wrappers, sharing `model`'s variables. Train
    it with the `UpdatePruningStep` callback (`rsr_tf.train_rsr` adds it),
    then `strip` it.

  Raises:
    ModelError: a subclassed model, one already pruned, or one without any
      prunable layer.
  """
  convert.check_functional(model, "prune_global")
  if is_pruned(model):
    raise convert.ModelError(f"prune_global: {model.name!r} is already pruned; "
                             "strip it first")
  if not prunable_layers(model):
    raise convert.ModelError(
        f"prune_global: {model.name!r} has no Conv2D, DepthwiseConv2D or "
        "Dense layer to prune")
  skipped = left_dense(model)
  if skipped:
    _LOG.warning("prune_global: %d layer(s) of %r hold kernels that are not "
                 "pruned (only Conv2D, DepthwiseConv2D and Dense are): %s",
                 len(skipped), model.name,
                 ", ".join(f"{l.name} ({type(l).__name__})" for l in skipped))
  sparsities = global_magnitude_sparsities(model, target_sparsity)
  pruned = prune(model, fixed_schedules(sparsities))
  for layer in _walk_wrappers(pruned):
    for weight, mask, _ in layer.pruning_vars:
      keep = _tfmot_mask(weight.numpy(), sparsities[layer.layer.name])
      mask.assign(keep.astype(mask.dtype.as_numpy_dtype))
      weight.assign(weight.numpy() * keep)
  return pruned


def _tfmot_mask(values, sparsity):
  """The mask tfmot's magnitude rule gives `values` at `sparsity`, in numpy.

  It keeps the round(n * (1 - sparsity)) largest magnitudes (ties at the
  last one kept), with tfmot's float32 arithmetic, so the mask it computes
  again on the first training call is this one.
  """
  magnitudes = np.abs(values)
  keep = int(np.round(np.float32(magnitudes.size)
                      * (np.float32(1) - np.float32(sparsity))))
  if keep >= magnitudes.size:
    return np.ones_like(magnitudes, bool)
  if keep <= 0:
    return np.zeros_like(magnitudes, bool)
  threshold = np.sort(magnitudes.ravel())[magnitudes.size - keep]
  return magnitudes >= threshold


def _walk_wrappers(model):
  for layer in model.layers:
    if _is_wrapper(layer):
      yield layer
    elif isinstance(layer, keras.Model):
      yield from _walk_wrappers(layer)


def strip(model):
  """Removes the pruning wrappers; kernels keep their zeros."""
  return _sparsity.strip_pruning(model)


def is_pruned(model):
  """Whether any layer of `model` (or of a sub-model) is in a pruning wrapper."""
  return any(True for _ in _walk_wrappers(model))


def callbacks():
  """Callbacks without which a pruned model fails at its first step."""
  return [_sparsity.UpdatePruningStep()]
