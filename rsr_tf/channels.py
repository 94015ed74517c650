"""Channel (filter) pruning that makes a model physically narrower.

Unstructured zeros do not make inference faster; removing whole output
filters does. `plan` picks the filters to keep with one global threshold on
batch-norm-aware filter scores, and `rebuild` makes a new functional model in
which those convs (and the layers that read their channels) are narrower,
with no masks. The removed filters' constant output is folded exactly into
the next conv or dense layer.

A conv can be narrowed when its channels reach only channel-wise layers
(batch norm, element-wise activations, pooling, dropout, depthwise convs)
before the layers that consume them (Conv2D, or Dense after global pooling
or Flatten). A conv whose channels meet anything else (an Add of a residual
stream, a Concatenate, a Reshape, the model output) keeps its width, and the
plan says why in one line.
"""

import dataclasses
import math

import rsr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from rsr_tf import config
from rsr_tf import convert
from rsr_tf import layers as rsr_layers
from rsr_tf import pruning

_CONVS = (keras.layers.Conv2D, rsr_layers.NoisyConv2D)
_DEPTHWISE = (keras.layers.DepthwiseConv2D, rsr_layers.NoisyDepthwiseConv2D)
_DENSE = (keras.layers.Dense, rsr_layers.NoisyDense)
_ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU,
                      keras.layers.ELU, keras.layers.Dropout)  # + SpatialDropout
_POOLS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
_GLOBAL_POOLS = (keras.layers.GlobalAveragePooling2D,
                 keras.layers.GlobalMaxPooling2D)
# Activations that act on each value alone (a softmax mixes channels).
_ELEMENTWISE = frozenset((
    "linear", "relu", "relu6", "elu", "selu", "gelu", "sigmoid",
    "hard_sigmoid", "tanh", "swish", "silu", "softplus", "softsign",
    "exponential", "leaky_relu", "mish"))


def _is(layer, types):
  # Exact types, as convert does: a subclass (Conv2DTranspose is a Conv2D)
  # uses its kernel differently.
  return type(layer) in types


# --- the layer that holds a fold -------------------------------------------


@keras.saving.register_keras_serializable(package="rsr_tf")
class ChannelFold(keras.layers.Layer):
  """Adds the fixed output of a conv's removed input channels, then its activation.

  A removed filter with zero weights outputs a constant, so what the next conv
  received from it does not depend on the image: a fixed map M [H, W, C_out].
  Under zero padding M is not constant near the borders, so it cannot be a
  bias. It is held in one of two exact forms:

  * `conv` given (the removed inputs were spatially constant, k_c): the
    weight is `taps` [kh, kw, C_out], taps[i, j, o] = sum_c k_c W[i, j, c, o],
    and M is that kernel applied to an all-ones image with the consumer's
    geometry. kh * kw * C_out numbers, against H * W * C_out for the map.
  * `conv` None (the removed inputs were a fixed map, e.g. after a depthwise
    conv with zero padding): the weight is M itself.

  Args:
    fold_shape: shape of the weight, [kh, kw, C] or [H, W, C].
    conv: None, or {"input_size": [H, W], "strides", "padding",
      "dilation_rate"} of the consumer conv.
    activation: the consumer's activation, applied after the fold (the
      rebuilt consumer itself is linear).
  """

  def __init__(self, fold_shape, conv=None, activation=None, **kwargs):
    super().__init__(**kwargs)
    self.fold_shape = tuple(int(d) for d in fold_shape)
    self.conv = None if conv is None else {
        "input_size": [int(d) for d in conv["input_size"]],
        "strides": [int(d) for d in conv["strides"]],
        "padding": str(conv["padding"]),
        "dilation_rate": [int(d) for d in conv["dilation_rate"]]}
    self.activation = keras.activations.get(activation)
    self.fold = None

  def build(self, input_shape):
    self.fold = self.add_weight(name="fold", shape=self.fold_shape,
                                initializer="zeros", trainable=False)
    super().build(input_shape)

  def fixed_map(self):
    """M [H, W, C_out], the fixed map this layer adds."""
    if self.conv is None:
      return tf.convert_to_tensor(self.fold)
    ones = tf.ones([1, *self.conv["input_size"], 1], self.fold.dtype)
    return tf.nn.convolution(
        ones, self.fold[:, :, None, :], strides=self.conv["strides"],
        padding=self.conv["padding"].upper(),
        dilations=self.conv["dilation_rate"])[0]

  def call(self, inputs):
    # The map depends on the frozen fold weight alone: computed when the
    # function is traced, it reaches a converter as one constant to add,
    # not as a convolution of ones run at every inference.
    with tf.init_scope():
      fixed = self.fixed_map()
    return self.activation(inputs + tf.cast(fixed, inputs.dtype))

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "fold_shape": list(self.fold_shape),
            "conv": self.conv,
            "activation": keras.activations.serialize(self.activation)}


CUSTOM_OBJECTS = {"ChannelFold": ChannelFold}


# --- the layer graph ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Graph:
  nodes: tuple       # non-input nodes, producers before consumers
  layers: dict       # name -> layer
  consumers: dict    # name -> names of the layers that read its output
  outputs: frozenset  # names of the layers whose output the model returns


def _graph(model, what):
  """The layer graph of a Sequential or functional `model`, each layer once."""
  convert.check_functional(model, what)
  if pruning.is_pruned(model):
    raise convert.ModelError(f"{what}: {model.name!r} is in pruning wrappers; "
                             "strip it first")
  if not getattr(model, "_is_graph_network", False):
    raise convert.ModelError(f"{what}: {model.name!r} is not built; give it a "
                             "keras.Input (or call build) first")
  by_depth = model._nodes_by_depth  # pylint: disable=protected-access
  nodes = [n for depth in sorted(by_depth, reverse=True)
           for n in by_depth[depth] if not n.is_input]
  layers, consumers = {}, {}
  for node in nodes:
    name = node.layer.name
    if name in layers:
      raise convert.ModelError(f"{what}: layer {name!r} of {model.name!r} is "
                               "called more than once; shared layers cannot be "
                               "narrowed")
    layers[name] = node.layer
    consumers.setdefault(name, [])
    for tensor in node.keras_inputs:
      producer = tensor._keras_history.layer  # pylint: disable=protected-access
      consumers.setdefault(producer.name, []).append(name)
  outputs = frozenset(t._keras_history.layer.name  # pylint: disable=protected-access
                      for t in model.outputs)
  return _Graph(tuple(nodes), layers, consumers, outputs)


def _activation_name(activation):
  return getattr(activation, "__name__", str(activation))


def _channels_last(layer):
  return getattr(layer, "data_format", "channels_last") == "channels_last"


def _step(layer, rank):
  """How `layer` passes on the channels of a `rank`-D input, or why it cannot.

  Returns:
    (kind, rank of its output) with kind "same", "depthwise", "flatten" or
    "consumer"; or a string, the reason the channels stop here.
  """
  kind = type(layer).__name__
  if not _channels_last(layer):
    return f"{layer.name} ({kind}), which is channels_first"
  if isinstance(layer, keras.layers.BatchNormalization):
    if list(layer.axis) != [rank - 1]:
      return (f"{layer.name} ({kind}), which normalises axis "
              f"{list(layer.axis)}, not the channels")
    return "same", rank
  if isinstance(layer, _ACTIVATION_LAYERS):
    return "same", rank
  if type(layer) is keras.layers.Activation:
    if _activation_name(layer.activation) not in _ELEMENTWISE:
      return (f"{layer.name} ({_activation_name(layer.activation)}), which "
              "mixes channels")
    return "same", rank
  if rank == 4 and _is(layer, _POOLS):
    return "same", 4
  if rank == 4 and _is(layer, _GLOBAL_POOLS):
    return "same", 4 if layer.keepdims else 2
  if rank == 4 and _is(layer, (keras.layers.Flatten,)):
    return "flatten", 2
  if rank == 4 and _is(layer, _DEPTHWISE):
    return "depthwise", 4
  if rank == 4 and _is(layer, _CONVS) and layer.groups == 1:
    return "consumer", 4
  if _is(layer, _DENSE):
    if rank == 2:
      return "consumer", 2
    return f"{layer.name} ({kind}), which reads a {rank}-D tensor"
  return f"{layer.name} ({kind}), which is not channel-wise"


@dataclasses.dataclass(frozen=True)
class _Chain:
  """Where one conv's output channels go, up to the layers that consume them.

  `members` maps each channel-wise layer in between to (parent, kind, factor):
  factor is the depthwise multiplier or, for Flatten, the spatial size.
  `consumers` maps each conv/dense that reads the channels to its parent.
  Parents come before children in both.
  """
  conv: str
  members: dict
  consumers: dict


def _chain(graph, conv):
  """The `_Chain` of `conv`, or a one-line reason it cannot be narrowed."""
  layer = graph.layers[conv]
  if not _channels_last(layer):
    return "channels_first"
  if layer.groups != 1:
    return f"grouped convolution (groups={layer.groups})"
  if _activation_name(layer.activation) not in _ELEMENTWISE:
    return f"its activation {_activation_name(layer.activation)} mixes channels"
  members, consumers = {}, {}
  todo = [(conv, 4)]
  while todo:
    parent, rank = todo.pop(0)
    if parent in graph.outputs:
      return f"its channels reach the model output at {parent}"
    for name in graph.consumers[parent]:
      child = graph.layers[name]
      step = _step(child, rank)
      if isinstance(step, str):
        return f"its channels reach {step}"
      kind, out_rank = step
      if kind == "consumer":
        consumers[name] = parent
        continue
      factor = 1
      if kind == "depthwise":
        factor = child.depth_multiplier
      elif kind == "flatten":
        factor = math.prod(child.input_shape[1:-1])
      members[name] = (parent, kind, factor)
      todo.append((name, out_rank))
  if not consumers:
    return "no conv or dense layer reads its channels"
  return _Chain(conv, members, consumers)


def _chains(graph):
  """({conv: _Chain} for the narrowable convs, ["conv: reason"] for the rest)."""
  chains, skipped = {}, []
  for name, layer in graph.layers.items():
    if _is(layer, _CONVS):
      chain = _chain(graph, name)
      if isinstance(chain, str):
        skipped.append(f"{name}: {chain}")
      else:
        chains[name] = chain
    elif isinstance(layer, keras.Model):
      skipped.extend(f"{inner.name}: inside sub-model {name}"
                     for inner in pruning.prunable_layers(layer)
                     if _is(inner, _CONVS))
  return chains, skipped


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
  graph = _graph(model, "filter_scores")
  return {name: _score(layer, _following_bn(graph, name))
          for name, layer in graph.layers.items() if _is(layer, _CONVS)}


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
  if _is(layer, _DENSE):
    return math.prod(shape[1:-1]), c_in, shape[-1]
  kernel = layer.kernel_size[0] * layer.kernel_size[1]
  if _is(layer, _DEPTHWISE):
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
  graph = _graph(model, "channels.plan")
  chains, _ = _chains(graph)
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
  graph = _graph(model, "channels.plan_for")
  chains, skipped = _chains(graph)
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
  weights, folds = _narrowed(model, graph, chains, keep)
  return ChannelPlan(
      keep=keep,
      widths={name: (len(full[name]), len(keep[name])) for name in chains},
      skipped=tuple(skipped),
      macs_before=count({name: len(v) for name, v in full.items()}),
      macs_after=count({name: len(v) for name, v in keep.items()}),
      params_before=model.count_params(),
      params_after=_params_after(graph, weights, folds))


# --- cutting weights and folding constants ---------------------------------


def _expand(indices, kind, factor, channels):
  """Channel indices after a step, given those before it."""
  indices = np.asarray(indices)
  if kind == "depthwise":  # output channel c * multiplier + m
    return (indices[:, None] * factor + np.arange(factor)).ravel()
  if kind == "flatten":  # channels-last: position s, channel c -> s * C + c
    return (np.arange(factor)[:, None] * channels + indices).ravel()
  return indices


def _cuts(graph, chains, keep):
  """{layer name: [kept input channels or None, kept output channels or None]}."""
  cuts = {}
  for conv, chain in chains.items():
    if len(keep[conv]) == graph.layers[conv].filters:
      continue
    cuts.setdefault(conv, [None, None])[1] = np.asarray(keep[conv])
    reach = {conv: np.asarray(keep[conv])}
    for name, (parent, kind, factor) in chain.members.items():
      channels = graph.layers[name].input_shape[-1]
      reach[name] = _expand(reach[parent], kind, factor, channels)
      if graph.layers[name].weights:
        cuts[name] = [reach[parent], reach[name]]
    for name, parent in chain.consumers.items():
      cuts.setdefault(name, [None, None])[0] = reach[parent]
  return cuts


# Weights a cut layer holds, and which kernel axes index (input, output).
_KERNEL_AXES = {"kernel": (-2, -1), "depthwise_kernel": (-2, None)}
_VECTORS = ("gamma", "beta", "moving_mean", "moving_variance")


def _take(value, axes_and_indices):
  for axis, indices in axes_and_indices:
    if indices is not None and axis is not None and value.ndim >= -axis:
      value = np.take(value, indices, axis=value.ndim + axis)
  return value


def _cut_weights(layer, cut):
  """{attribute: new value} for every weight of a cut conv, dense, depthwise or BN."""
  keep_in, keep_out = cut
  if isinstance(layer, keras.layers.BatchNormalization):
    return {a: np.take(getattr(layer, a).numpy(), keep_in)
            for a in _VECTORS if getattr(layer, a) is not None}
  attribute = "depthwise_kernel" if _is(layer, _DEPTHWISE) else "kernel"
  axis_in, axis_out = _KERNEL_AXES[attribute]
  # A depthwise kernel [h, w, in, multiplier] is cut on its input axis only.
  spec = [(axis_in, keep_in), (axis_out, keep_out)]
  kernel = getattr(layer, attribute).numpy()
  weights = {attribute: _take(kernel, spec)}
  if layer.use_bias:
    weights["bias"] = _take(layer.bias.numpy(), [(-1, keep_out)])
  alpha = getattr(layer, "alpha", None)
  if alpha is not None:
    # alpha has the shape of the kernel's trailing axes (none, the output
    # axis, or all of them), so the same cuts apply from the end.
    trailing = [(axis, indices) for axis, indices in spec
                if axis is not None and -axis <= alpha.shape.rank]
    weights["alpha"] = _take(alpha.numpy(), trailing)
  return weights


def _zero_kernel_output(conv):
  """The output of `conv` with an all-zero kernel: activation(bias), everywhere."""
  bias = conv.bias.numpy() if conv.use_bias else np.zeros(conv.filters)
  value = np.broadcast_to(bias, (1, *conv.output_shape[1:])).astype(np.float32)
  return conv.activation(tf.constant(value))


def _is_constant(x):
  return np.allclose(x, x[:, :1, :1, :], rtol=1e-6,
                     atol=1e-6 * max(1.0, float(np.max(np.abs(x)))))


def _fold(graph, reader, x, keep_in, keep_out):
  """What the removed channels `x` add to `reader`'s output: (form, array).

  Forms: "bias" (dense), "taps" or "map" (see ChannelFold). None when the
  removed channels add nothing.
  """
  layer = graph.layers[reader]
  removed = np.ones(x.shape[-1], bool)
  removed[keep_in] = False
  x = np.asarray(x) * removed
  if not np.any(x):
    return None
  kernel = layer.kernel.numpy()
  if _is(layer, _DENSE):
    form, fold = "bias", x[0] @ kernel
  elif _is_constant(x):
    form, fold = "taps", np.tensordot(kernel, x[0, 0, 0], axes=[[2], [0]])
  else:
    # The plain convolution, without the noisy layer's noise or bias.
    form, fold = "map", keras.layers.Conv2D.convolution_op(
        layer, tf.constant(x), layer.kernel).numpy()[0]
  if keep_out is not None:
    fold = fold[..., keep_out]
  return form, fold.astype(np.float32)


def _folds(graph, chains, keep, cuts):
  """{reader name: (form, array)} for every reader of removed channels.

  Each removed filter is taken as all-zero: its output is then
  activation(bias), which the layers between it and its readers (run here
  in inference mode, noise off) turn into a fixed input of theirs.
  """
  folds = {}
  for conv, chain in chains.items():
    if len(keep[conv]) == graph.layers[conv].filters:
      continue
    values = {conv: _zero_kernel_output(graph.layers[conv])}
    for name, (parent, _, _) in chain.members.items():
      values[name] = graph.layers[name](values[parent], training=False)
    for name, parent in chain.consumers.items():
      keep_in, keep_out = cuts[name]
      fold = _fold(graph, name, values[parent].numpy(), keep_in, keep_out)
      if fold is not None:
        folds[name] = fold
  return folds


def _narrowed(model, graph, chains, keep):
  """({layer name: {attribute: value}}, folds) for the narrowed model."""
  cuts = _cuts(graph, chains, keep)
  with rsr_layers.noise_enabled_as(model, False):
    folds = _folds(graph, chains, keep, cuts)
  weights = {name: _cut_weights(graph.layers[name], cut)
             for name, cut in cuts.items()}
  for name, (form, fold) in folds.items():
    if form == "bias":  # exact: a dense layer sees one vector per image
      weights.setdefault(name, _cut_weights(graph.layers[name], [None, None]))
      weights[name]["bias"] = weights[name].get("bias", 0) + fold
  return weights, folds


def _params_after(graph, weights, folds):
  total = 0
  for name, layer in graph.layers.items():
    if name in weights:
      total += sum(v.size for v in weights[name].values())
    else:
      total += layer.count_params()
  return total + sum(fold.size for form, fold in folds.values()
                     if form != "bias")


# --- rebuilding ------------------------------------------------------------


def _fresh(layer, keep, folds):
  """A new layer with `layer`'s configuration, narrowed as the plan says."""
  if isinstance(layer, keras.Model):  # a sub-model, copied with its weights
    return convert._plain_copy(layer)  # pylint: disable=protected-access
  config = layer.get_config()
  if layer.name in keep and len(keep[layer.name]) != layer.filters:
    config["filters"] = len(keep[layer.name])
  form = folds.get(layer.name, (None,))[0]
  if form == "bias":
    config["use_bias"] = True
  elif form is not None:
    config["activation"] = "linear"  # applied by the fold, after it
  return type(layer).from_config(config)


def _fold_layer(layer, form, fold, names):
  conv = None
  if form == "taps":
    conv = {"input_size": layer.input_shape[1:3], "strides": layer.strides,
            "padding": layer.padding, "dilation_rate": layer.dilation_rate}
  name = f"{layer.name}_fold"
  while name in names:
    name += "_"
  return ChannelFold(fold.shape, conv=conv,
                     activation=layer.get_config()["activation"], name=name,
                     dtype=layer.dtype_policy)


def rebuild(model, channel_plan):
  """A new functional model, physically narrower as `channel_plan` says.

  Each narrowed conv keeps its kept filters' kernel, bias and PNI-W alpha
  (same noise mode and settings); the batch norms, depthwise convs and other
  channel-wise layers after it keep those channels; and the conv or dense
  layers that read them lose the matching input channels. What the removed
  filters, taken as all-zero, fed those readers is folded in exactly: into a
  dense layer's bias, or as a `ChannelFold` after a conv (zero padding makes
  it a fixed map, not a bias). The rest of the model is copied as it is.

  With noise on, a narrowed noisy layer draws its noise with the std of its
  narrower kernel, so the noise differs slightly from the original's; with
  noise off and removed filters that were all-zero, the outputs are equal.

  Args:
    model: the model `channel_plan` was made for.
    channel_plan: from `plan` or `plan_for`.

  Returns:
    A new functional tf_keras model; `model` is left as it was.

  Raises:
    ModelError: a subclassed, unbuilt or pruning-wrapped model.
    ValueError: a plan made for another model.
  """
  graph = _graph(model, "channels.rebuild")
  chains, _ = _chains(graph)
  keep = channel_plan.keep
  for name, indices in keep.items():
    if name not in chains or channel_plan.widths[name][0] != graph.layers[
        name].filters:
      raise ValueError(f"the plan does not fit {model.name!r}: conv {name!r} "
                       "is not a narrowable conv of that width")
  weights, folds = _narrowed(model, graph, chains, keep)
  new_of = {}  # id of an old KerasTensor -> the new tensor
  inputs = []
  for tensor in model.inputs:
    source = tensor._keras_history.layer  # pylint: disable=protected-access
    inputs.append(keras.Input(shape=tensor.shape[1:], batch_size=tensor.shape[0],
                              dtype=tensor.dtype, name=source.name))
    new_of[id(tensor)] = inputs[-1]

  def swap(structure):
    return tf.nest.map_structure(lambda v: new_of.get(id(v), v), structure)

  for node in graph.nodes:
    layer = node.layer
    fresh = _fresh(layer, keep, folds)
    outputs = fresh(*swap(node.call_args), **swap(node.call_kwargs))
    if layer.name in weights:
      for attribute, value in weights[layer.name].items():
        getattr(fresh, attribute).assign(value)
    elif layer.weights and not isinstance(layer, keras.Model):
      fresh.set_weights(layer.get_weights())
    form, fold = folds.get(layer.name, (None, None))
    if form in ("taps", "map"):
      fold_layer = _fold_layer(layer, form, fold, graph.layers)
      outputs = fold_layer(outputs)
      fold_layer.fold.assign(fold)
    for old, new in zip(tf.nest.flatten(node.outputs),
                        tf.nest.flatten(outputs)):
      new_of[id(old)] = new
  outputs = [new_of[id(t)] for t in model.outputs]
  return keras.Model(inputs if len(inputs) > 1 else inputs[0],
                     outputs if len(outputs) > 1 else outputs[0],
                     name=model.name)
