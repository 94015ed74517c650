"""The physically narrower model of a channel plan, and the layer it needs.

`rebuild` makes a new functional model in which the narrowed convs (and the
layers that read their channels) are narrower, with no masks: it cuts their
weights and folds the removed filters' constant output exactly into the next
conv or dense layer, a conv's fold held by a `ChannelFold` layer.

The cutting and folding are here too, as `narrowed` and `params_after`:
`channels.plan_for` counts the rebuilt model's weights with them. This module
reads a plan's `keep` and `widths` only and does not import `channels`, so
scores and the plan stay apart from the rebuild machinery.
"""

import rsr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from rsr_tf import channel_graph
from rsr_tf import convert
from rsr_tf import layers as rsr_layers


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
  depthwise = channel_graph.is_exactly(layer, channel_graph.DEPTHWISE)
  attribute = "depthwise_kernel" if depthwise else "kernel"
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
  if channel_graph.is_exactly(layer, channel_graph.DENSE):
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


def narrowed(model, graph, chains, keep):
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


def params_after(graph, weights, folds):
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
  graph = channel_graph.layer_graph(model, "channels.rebuild")
  chains, _ = channel_graph.narrowable_chains(graph)
  keep = channel_plan.keep
  for name, indices in keep.items():
    if name not in chains or channel_plan.widths[name][0] != graph.layers[
        name].filters:
      raise ValueError(f"the plan does not fit {model.name!r}: conv {name!r} "
                       "is not a narrowable conv of that width")
  weights, folds = narrowed(model, graph, chains, keep)
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
