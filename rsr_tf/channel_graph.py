"""Which convs of a model can be narrowed, and where their channels go.

A conv can be narrowed when its channels reach only channel-wise layers
(batch norm, element-wise activations, pooling, dropout, depthwise convs)
before the layers that consume them (Conv2D, or Dense after global pooling
or Flatten). A conv whose channels meet anything else (an Add of a residual
stream, a Concatenate, a Reshape, the model output) keeps its width, and the
plan says why in one line.

This is the layer-graph analysis alone, with no scores and no weights: the
plan (`channels`) and the rebuild (`channel_rebuild`) both walk the chains
it finds, so it lives apart from either.
"""

import dataclasses
import math

import rsr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tf_keras as keras

from rsr_tf import convert
from rsr_tf import layers as rsr_layers
from rsr_tf import pruning

CONVS = (keras.layers.Conv2D, rsr_layers.NoisyConv2D)
DEPTHWISE = (keras.layers.DepthwiseConv2D, rsr_layers.NoisyDepthwiseConv2D)
DENSE = (keras.layers.Dense, rsr_layers.NoisyDense)
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


def is_exactly(layer, types):
  """Whether `layer`'s type is one of `types` (a subclass is not)."""
  # Exact types, as convert does: a subclass (Conv2DTranspose is a Conv2D)
  # uses its kernel differently.
  return type(layer) in types


# --- the layer graph ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Graph:
  nodes: tuple       # non-input nodes, producers before consumers
  layers: dict       # name -> layer
  consumers: dict    # name -> names of the layers that read its output
  outputs: frozenset  # names of the layers whose output the model returns


def layer_graph(model, what):
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
  if rank == 4 and is_exactly(layer, _POOLS):
    return "same", 4
  if rank == 4 and is_exactly(layer, _GLOBAL_POOLS):
    return "same", 4 if layer.keepdims else 2
  if rank == 4 and is_exactly(layer, (keras.layers.Flatten,)):
    return "flatten", 2
  if rank == 4 and is_exactly(layer, DEPTHWISE):
    return "depthwise", 4
  if rank == 4 and is_exactly(layer, CONVS) and layer.groups == 1:
    return "consumer", 4
  if is_exactly(layer, DENSE):
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


def narrowable_chains(graph):
  """({conv: _Chain} for the narrowable convs, ["conv: reason"] for the rest)."""
  chains, skipped = {}, []
  for name, layer in graph.layers.items():
    if is_exactly(layer, CONVS):
      chain = _chain(graph, name)
      if isinstance(chain, str):
        skipped.append(f"{name}: {chain}")
      else:
        chains[name] = chain
    elif isinstance(layer, keras.Model):
      skipped.extend(f"{inner.name}: inside sub-model {name}"
                     for inner in pruning.prunable_layers(layer)
                     if is_exactly(inner, CONVS))
  return chains, skipped
