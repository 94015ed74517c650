"""Channel (filter) pruning that makes a model physically narrower.

Unstructured zeros do not make inference faster; removing whole output
filters does. `plan` picks the filters to keep with one global threshold on
batch-norm-aware filter scores, and `rebuild` makes a new functional model in
which those convs (and the layers that read their channels) are narrower,
with no masks. The removed filters' constant output is folded exactly into
the next conv or dense layer.

A conv can be narrowed when its channels reach only channel-wise layers
before the layers that consume them; a conv whose channels meet anything
else (a residual Add, the model output, ...) keeps its width, and the plan
says why in one line.

This module is the public home of channel pruning and holds the scores, the
MAC count and the plan. Which convs can be narrowed is decided in
`channel_graph`; `rebuild`, `ChannelFold` and `CUSTOM_OBJECTS` are defined in
`channel_rebuild` and named here too, so callers need this module alone.
"""

import dataclasses
import math

import rsr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tf_keras as keras

from rsr_tf import channel_graph
from rsr_tf import channel_rebuild
from rsr_tf import config
from rsr_tf import convert
from rsr_tf import pruning

ChannelFold = channel_rebuild.ChannelFold
CUSTOM_OBJECTS = channel_rebuild.CUSTOM_OBJECTS
rebuild = channel_rebuild.rebuild


# --- scores ----------------------------------------------------------------


def _following_bn(graph, conv):
  """The BatchNormalization that alone reads `conv`'s output, or None."""
  readers = graph.consumers[conv]
  if len(readers) == 1 and conv not in graph.outputs:
    layer = graph.layers[readers[0]]
    if isinstance(layer, keras.layers.BatchNormalization) and list(
        layer.axis) == [3]:
      return layer
  return None


def _score(conv, bn):
  kernel = conv.kernel.numpy()
  norms = np.sqrt(np.sum(np.square(kernel.reshape(-1, kernel.shape[-1])), 0))
  if bn is None:
    return norms
  gamma = 1.0 if bn.gamma is None else np.abs(bn.gamma.numpy())
  return norms * gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)


def filter_scores(model):
  """{conv name: score per output channel} for every Conv2D / NoisyConv2D.

  The score is the L2 norm of the filter as it acts at inference. For a conv
  whose output goes straight (and only) into a BatchNormalization, that is
  the filter with the batch norm folded in, ||W_f||_2 * |gamma_f| /
  sqrt(moving_var_f + eps): batch norm undoes any scale of the raw filter
  (a filter shrunk by the lasso can still drive a large output), so ||W_f||
  alone ranks filters by a number the network does not see. The folded norm
  is unchanged by any reparametrisation that leaves the computed function
  unchanged, e.g. W_f, b_f, moving_mean_f times s and gamma_f divided by s.
  Otherwise it is ||W_f||_2. Depthwise convs follow their input channels and
  are not scored; convs inside sub-models are not scored.

  Raises:
    ModelError: a subclassed, unbuilt or pruning-wrapped model.
  """
  graph = channel_graph.layer_graph(model, "filter_scores")
  return {name: _score(layer, _following_bn(graph, name))
          for name, layer in graph.layers.items()
          if channel_graph.is_exactly(layer, channel_graph.CONVS)}


def relative_scores(scores):
  """Each layer's scores divided by that layer's mean score (0 stays 0).

  Folded norms carry the scale of each layer's input (1/std of what it
  reads), which differs from layer to layer, so one threshold on raw scores
  would empty layers that merely see larger inputs. Relative to the layer's
  mean, a score says how a filter compares with its neighbours.
  """
  relative = {}
  for name, values in scores.items():
    mean = float(np.mean(values))
    relative[name] = values / mean if mean > 0 else np.zeros_like(values)
  return relative


# --- cost ------------------------------------------------------------------


def _cost(layer):
  """(coef, c_in, c_out): `layer` does coef * c_in * c_out MACs per image."""
  shape = layer.output_shape
  if any(d is None for d in shape[1:]):
    raise convert.ModelError(f"layer {layer.name!r} has output shape "
                             f"{list(shape)}; counting MACs needs a model with "
                             "a fixed input size")
  c_in = layer.input_shape[-1]
  if channel_graph.is_exactly(layer, channel_graph.DENSE):
    return math.prod(shape[1:-1]), c_in, shape[-1]
  kernel = layer.kernel_size[0] * layer.kernel_size[1]
  if channel_graph.is_exactly(layer, channel_graph.DEPTHWISE):
    return shape[1] * shape[2] * kernel * layer.depth_multiplier, c_in, 1
  return shape[1] * shape[2] * kernel, c_in // layer.groups, shape[-1]


def macs(model):
  """Multiply-accumulates per image of `model`'s conv, depthwise and dense layers."""
  return sum(math.prod(_cost(layer)) for layer in pruning.prunable_layers(model))


def _scales(chain):
  """{consumer or depthwise: channels it reads per channel the conv keeps}."""
  per_kept = {chain.conv: 1}
  for name, (parent, kind, factor) in chain.members.items():
    per_kept[name] = per_kept[parent] * (factor if kind in (
        "depthwise", "flatten") else 1)
  scales = {name: per_kept[parent] for name, parent in chain.consumers.items()}
  for name, (parent, kind, _) in chain.members.items():
    if kind == "depthwise":
      scales[name] = per_kept[parent]
  return scales


def _mac_counter(model, chains):
  """A function from {conv: kept width} to the model's MACs."""
  terms = []
  readers = {name: (conv, scale) for conv, chain in chains.items()
             for name, scale in _scales(chain).items()}
  for layer in pruning.prunable_layers(model):
    coef, c_in, c_out = _cost(layer)
    terms.append((coef, c_in, c_out, readers.get(layer.name),
                  layer.name if layer.name in chains else None))

  def count(widths):
    total = 0
    for coef, c_in, c_out, reads, narrowed in terms:
      if reads is not None:
        c_in = widths[reads[0]] * reads[1]
      if narrowed is not None:
        c_out = widths[narrowed]
      total += coef * c_in * c_out
    return total

  return count


# --- the plan --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChannelPlan:
  """Which output channels each narrowable conv keeps, and what it saves.

  Attributes:
    keep: {conv name: kept output channels, ascending} for every conv that
      can be narrowed (all of its channels when it is not narrowed).
    widths: {conv name: (width before, width after)} for the same convs.
    skipped: one line per conv that cannot be narrowed: "name: reason".
    macs_before, macs_after: MACs per image of the conv/dense layers, at the
      model's input size.
    params_before, params_after: every weight, trainable or not.
    threshold: the global threshold on `relative_scores` (channels above it
      are kept, and more where widths round up); None for `plan_for`.
    target_fraction: what `plan` was asked to remove; None for `plan_for`.
  """
  keep: dict
  widths: dict
  skipped: tuple
  macs_before: int
  macs_after: int
  params_before: int
  params_after: int
  threshold: float = None
  target_fraction: float = None

  @property
  def macs_removed(self):
    """Fraction of the conv/dense MACs the plan removes."""
    return (self.macs_before - self.macs_after) / self.macs_before


def _rounded(count, width, multiple, min_channels):
  """`count` rounded up to a multiple of `multiple`, within [floor, width].

  The floor, `min_channels`, need not be a multiple: a layer whose filters
  all fall below the threshold keeps that many (8 of 16 in a ResNet-20's
  first stage ran faster than 16).
  """
  rounded = -(-count // multiple) * multiple
  return min(max(rounded, min(min_channels, width)), width)


def _top(relative, width):
  """Indices of the `width` highest scores, ascending (ties: lower index)."""
  order = np.argsort(-relative, kind="stable")
  return tuple(sorted(int(i) for i in order[:width]))


def plan(model, target_fraction, multiple=config.CHANNEL_MULTIPLE, min_channels=8):
  """Chooses the channels to keep so that `target_fraction` of the MACs go.

  One global threshold on `relative_scores` (scores over their layer's
  mean) is raised until at least `target_fraction` of the conv/dense MACs,
  counted at the model's input size, are removed; it is the lowest such
  threshold. Each narrowable conv keeps its channels above the threshold,
  that count rounded up to a multiple of `multiple` (vector units and int8
  kernels work in such blocks), never above its width and never below
  min(min_channels, width); the kept channels are its highest-scoring ones.

  Args:
    model: a built Sequential or functional tf_keras model.
    target_fraction: in [0, 1), the fraction of the MACs to remove.
    multiple: kept widths are multiples of it (or the original width).
    min_channels: the fewest channels a narrowed conv keeps.

  Returns:
    A `ChannelPlan`.

  Raises:
    ModelError: a model that cannot be planned (subclassed, unbuilt, shared
      layers, no fixed input size).
    ValueError: bad arguments, or a target out of reach.
  """
  if not 0 <= target_fraction < 1:
    raise ValueError(f"target_fraction must be in [0, 1), got {target_fraction}")
  for label, value in (("multiple", multiple), ("min_channels", min_channels)):
    if int(value) != value or value < 1:
      raise ValueError(f"{label} must be a positive integer, got {value!r}")
  graph = channel_graph.layer_graph(model, "channels.plan")
  chains, _ = channel_graph.narrowable_chains(graph)
  relative = relative_scores({name: values for name, values in
                              filter_scores(model).items() if name in chains})
  full = {name: graph.layers[name].filters for name in chains}
  count = _mac_counter(model, chains)
  before = count(full)
  if not before:
    raise convert.ModelError(f"channels.plan: {model.name!r} has no Conv2D, "
                             "DepthwiseConv2D or Dense MACs to remove")

  def widths_at(threshold):
    return {name: _rounded(int(np.sum(values > threshold)), full[name],
                           multiple, min_channels)
            for name, values in relative.items()}

  def removed(threshold):
    return (before - count(widths_at(threshold))) / before

  thresholds = [-np.inf] + sorted(set(
      float(v) for values in relative.values() for v in values))
  if removed(thresholds[-1]) < target_fraction:
    raise ValueError(
        f"channels.plan: at most {removed(thresholds[-1]):.2%} of the MACs of "
        f"{model.name!r} can be removed with multiple={multiple}, "
        f"min_channels={min_channels} ({len(chains)} narrowable convs); "
        f"target_fraction={target_fraction} is out of reach")
  low, high = 0, len(thresholds) - 1  # removed(thresholds[high]) >= target
  while low < high:
    middle = (low + high) // 2
    if removed(thresholds[middle]) >= target_fraction:
      high = middle
    else:
      low = middle + 1
  threshold = thresholds[high]
  keep = {name: _top(relative[name], width)
          for name, width in widths_at(threshold).items()}
  return dataclasses.replace(plan_for(model, keep), threshold=threshold,
                             target_fraction=target_fraction)


def plan_for(model, keep):
  """The plan that keeps exactly `keep`'s channels (other convs stay whole).

  Args:
    model: a built Sequential or functional tf_keras model.
    keep: {conv name: indices of the output channels to keep}.

  Raises:
    ValueError: a name that is not a narrowable conv (with the reason), or
      indices that are empty, repeated or out of range.
  """
  graph = channel_graph.layer_graph(model, "channels.plan_for")
  chains, skipped = channel_graph.narrowable_chains(graph)
  reasons = dict(line.split(": ", 1) for line in skipped)
  chosen = {}
  for name, indices in keep.items():
    if name not in chains:
      raise ValueError(f"{name!r} cannot be narrowed: "
                       f"{reasons.get(name, 'not a Conv2D of the model')}")
    width = graph.layers[name].filters
    indices = tuple(sorted(int(i) for i in indices))
    if not indices or len(set(indices)) != len(indices) or not (
        0 <= indices[0] and indices[-1] < width):
      raise ValueError(f"keep[{name!r}] must be distinct channels in [0, "
                       f"{width}), at least one; got {list(indices)}")
    chosen[name] = indices
  full = {name: tuple(range(graph.layers[name].filters)) for name in chains}
  keep = {**full, **chosen}
  count = _mac_counter(model, chains)
  weights, folds = channel_rebuild.narrowed(model, graph, chains, keep)
  return ChannelPlan(
      keep=keep,
      widths={name: (len(full[name]), len(keep[name])) for name in chains},
      skipped=tuple(skipped),
      macs_before=count({name: len(v) for name, v in full.items()}),
      macs_after=count({name: len(v) for name, v in keep.items()}),
      params_before=model.count_params(),
      params_after=channel_rebuild.params_after(graph, weights, folds))
