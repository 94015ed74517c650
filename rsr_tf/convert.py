"""Any Sequential or functional tf_keras model to PNI-W and to logits, by cloning."""

import logging

import rsr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tf_keras as keras

from rsr_tf import layers as rsr_layers

_LOG = logging.getLogger("rsr_tf")


class ModelError(ValueError):
  """A model rsr_tf cannot work with; the message is one line for the user."""


def _is_functional(model):
  return isinstance(model, keras.Sequential) or getattr(
      model, "_is_graph_network", False)


def check_functional(model, what):
  """Raises ModelError unless `model` is a Sequential or functional tf_keras model.

  tfmot and `clone_model` need the layer graph, which a subclassed model
  does not expose.
  """
  if not isinstance(model, keras.Model):
    raise ModelError(
        f"{what} needs a tf_keras model, got {type(model).__module__}."
        f"{type(model).__name__}; build it with `import tf_keras as keras` "
        "(Keras 2), after `import rsr_tf`")
  if not _is_functional(model):
    raise ModelError(
        f"{what} needs a Sequential or functional model; {model.name!r} is a "
        f"subclassed model ({type(model).__name__}); rebuild it with the "
        "functional API, keras.Model(inputs, outputs), so its layers can be "
        "cloned")


def _is_softmax(activation):
  return activation in (keras.activations.softmax, "softmax") or getattr(
      activation, "__name__", "") == "softmax"


def final_softmax(model):
  """The layer that applies a softmax to `model`'s output, or None.

  Recognised: a `Softmax` layer, an `Activation("softmax")` layer, or a
  layer built with `activation="softmax"` (a Dense head, say), as the last
  layer of the model.
  """
  # A subclassed model's output layer is not known.
  if not (isinstance(model, keras.Model) and _is_functional(model)):
    return None
  if len(model.outputs) != 1:
    return None
  layer = model.outputs[0]._keras_history.layer  # pylint: disable=protected-access
  if isinstance(layer, keras.layers.Wrapper):  # a pruning wrapper
    layer = layer.layer
  if isinstance(layer, keras.layers.Softmax):
    return layer
  if _is_softmax(getattr(layer, "activation", None)):
    return layer
  return None


def _without_softmax(layer):
  """A fresh `layer` that leaves out its softmax (weights are copied later)."""
  if isinstance(layer, keras.layers.Softmax):
    return keras.layers.Activation("linear", name=layer.name)
  config = layer.get_config()
  config["activation"] = "linear"
  return type(layer).from_config(config)


def _convertible(layer):
  """The noisy twin class of `layer`, or None if it has none."""
  # Exact types: a subclass (Conv2DTranspose is a Conv2D) may compute
  # something else with its kernel.
  return rsr_layers.NOISY_TWINS.get(type(layer))


def holds_kernel(layer):
  """Whether `layer` holds a trainable kernel (a weight of 2 or more axes)."""
  return any(len(w.shape) >= 2 for w in layer.trainable_weights)


def _copy_weights(source, target):
  """Copies `source`'s variables into `target` (its clone or its twin)."""
  if isinstance(target, rsr_layers.NOISY_LAYER_TYPES) and not isinstance(
      source, rsr_layers.NOISY_LAYER_TYPES):
    target.noisy_weight.assign(getattr(source, target.KERNEL_ATTRIBUTE))
    if target.use_bias:
      target.bias.assign(source.bias)
    return
  target.set_weights(source.get_weights())


def _clone(model, clone_layer):
  """clone_model through `clone_layer`, then every weight copied by layer name."""
  clone = keras.models.clone_model(model, clone_function=clone_layer)
  for layer in model.layers:
    twin = clone.get_layer(layer.name)
    if isinstance(layer, keras.Model):
      continue  # a sub-model's clone already holds copies
    if layer.weights:
      _copy_weights(layer, twin)
  return clone


def add_weight_noise(model, mode="channel", alpha_init=0.25):
  """Clones `model` with every Conv2D, DepthwiseConv2D and Dense made noisy.

  Each becomes its PNI-W twin (`NoisyConv2D`, `NoisyDepthwiseConv2D`,
  `NoisyDense`) with the same configuration and weights, plus a learnable
  noise scale alpha: one per output channel in "channel" mode (for a
  depthwise kernel, one per input channel and multiplier). Other layers are
  copied as they are. A final softmax is dropped, so the clone outputs the
  logits beneath it (one warning line says so). Layers that hold a kernel but
  have no twin (Conv1D, SeparableConv2D, Conv2DTranspose, ...) keep
  deterministic weights and are named in one warning line. Sub-models are
  converted too.

  Args:
    model: a Sequential or functional tf_keras model.
    mode: "channel" (PNI's best), "layer", "element", or "none" (twins
      without noise, e.g. to make a DepthwiseConv2D prunable).
    alpha_init: starting value of every alpha.

  Returns:
    A new model; `model` is left as it was.

  Raises:
    ModelError: a subclassed model, or not a tf_keras model.
    ValueError: an unknown `mode` or a negative `alpha_init`.
  """
  check_functional(model, "add_weight_noise")
  if mode not in rsr_layers.NOISE_MODES:
    raise ValueError(f"mode must be one of {', '.join(rsr_layers.NOISE_MODES)}, "
                     f"got {mode!r}")
  if alpha_init < 0:
    raise ValueError(f"alpha_init must be >= 0, got {alpha_init}")
  softmax = final_softmax(model)
  left_out = []

  def clone_layer(layer):
    if isinstance(layer, keras.Model):
      return add_weight_noise(layer, mode, alpha_init)
    if holds_kernel(layer) and not isinstance(
        layer, rsr_layers.NOISY_LAYER_TYPES) and _convertible(layer) is None:
      left_out.append(f"{layer.name} ({type(layer).__name__})")
    fresh = _without_softmax(layer) if layer is softmax else _plain_copy(layer)
    twin_class = _convertible(fresh)
    if twin_class is None:
      return fresh
    return twin_class.from_config(
        {**fresh.get_config(), "noise": mode, "alpha_init": alpha_init})

  clone = _clone(model, clone_layer)
  if softmax is not None:
    _LOG.warning("add_weight_noise: %r ends in a softmax (layer %r); the noisy "
                 "clone outputs the logits beneath it", model.name, softmax.name)
  if left_out:
    _LOG.warning("add_weight_noise: %d layer(s) of %r have no PNI-W twin and "
                 "keep deterministic weights: %s", len(left_out), model.name,
                 ", ".join(left_out))
  return clone


def logits_model(model, warn_as=None):
  """`model` without its final softmax, or `model` itself if it has none.

  The clone holds copies of the weights. rsr_tf trains and attacks logits:
  cross-entropy on logits is stable, and a softmax output would saturate the
  attacks' gradients.

  Args:
    model: a tf_keras model.
    warn_as: if given, a softmax that is dropped is reported in one warning
      line that starts with it (the caller's name).
  """
  softmax = final_softmax(model)
  if softmax is None:
    return model
  if warn_as:
    _LOG.warning("%s: %r ends in a softmax (layer %r); training, attacks and "
                 "the returned model use the logits beneath it", warn_as,
                 model.name, softmax.name)

  def clone_layer(layer):
    if layer is softmax:
      return _without_softmax(layer)
    return _plain_copy(layer)

  return _clone(model, clone_layer)


def _plain_copy(layer):
  """A fresh copy of `layer`'s configuration; sub-models with their weights."""
  if isinstance(layer, keras.Model):
    return _clone(layer, _plain_copy)
  return type(layer).from_config(layer.get_config())


def require_logits(model, what):
  """Raises ModelError if `model` ends in a softmax, saying what to do."""
  softmax = final_softmax(model)
  if softmax is not None:
    raise ModelError(
        f"{what}: model {model.name!r} ends in a softmax (layer "
        f"{softmax.name!r}); rsr_tf trains and attacks logits: pass "
        "rsr_tf.logits_model(model), or build it without the final softmax")
