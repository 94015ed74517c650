"""Parametric noise injection on weights (PNI-W): prunable, serialisable layers."""

import contextlib

import numpy as np
import rsr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from rsr_tf import config

# The lists of names live in the light config module, which scripts read
# before TensorFlow loads.
NOISE_MODES = config.NOISE_MODES
NOISE_STD = config.NOISE_STD
# Name scope of the ops `noise_term` and the split noise path create.
NOISE_SCOPE = "pni_noise"


def _alpha_shape(mode, kernel_shape, channel_axes=1):
  """Shape of alpha for one kernel; `channel_axes` trailing axes index outputs."""
  if mode == "layer":
    return ()
  if mode == "channel":
    # Conv HWIO and dense [in, out]: the last axis is the output channel.
    # Depthwise [h, w, in, multiplier]: output channel in * multiplier + m.
    return tuple(kernel_shape[-channel_axes:])
  if mode == "element":
    return tuple(kernel_shape)
  raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")


def kernel_std(kernel, over="all"):
  """sigma of PNI-W: the std of `kernel`, over all its weights or the non-zero.

  With `over="kept"` and no non-zero weight it is 0 (nothing to add noise to).
  """
  if over == "all":
    return tf.math.reduce_std(kernel)
  kept = tf.cast(tf.not_equal(kernel, 0.0), kernel.dtype)
  count = tf.maximum(tf.reduce_sum(kept), 1.0)
  mean = tf.reduce_sum(kernel) / count
  return tf.sqrt(tf.reduce_sum(kept * tf.square(kernel - mean)) / count)


class _WeightNoise:
  """Shared behaviour: w_noisy = w + alpha * eta, eta ~ N(0, std(w)^2).

  Both eta and std(w) are constants for backprop, so d w_noisy / d alpha = eta
  and d w_noisy / d w = 1.
  """

  # The attribute holding the weight that gets noise, and how many of its
  # trailing axes index output channels (one alpha each in "channel" mode).
  KERNEL_ATTRIBUTE = "kernel"
  CHANNEL_AXES = 1

  # Cooperative with the Keras layer after this mixin in the MRO: it takes
  # the layer's own arguments, this the noise ones.
  def __init__(self, *args, noise="channel", alpha_init=0.25,
               noise_enabled=True, noise_std="all", **kwargs):
    super().__init__(*args, **kwargs)
    if noise not in NOISE_MODES:
      raise ValueError(
          f"noise must be one of {', '.join(NOISE_MODES)}, got {noise!r}")
    if noise_std not in NOISE_STD:
      raise ValueError(f"noise_std must be one of {', '.join(NOISE_STD)}, got "
                       f"{noise_std!r}")
    self.noise_std = noise_std
    if alpha_init < 0:
      raise ValueError(f"alpha_init must be >= 0, got {alpha_init}")
    self.noise = noise
    self.alpha_init = float(alpha_init)
    # A Python switch rather than a variable: with it off the graph has no
    # random op at all, which is what a deterministic export needs.
    self.noise_enabled = bool(noise_enabled)
    # Export-time only and never serialised: see `set_noise_split` and
    # `set_kept_draw`.
    self.noise_split = False
    self.kept_draw = False
    self.alpha = None

  def build(self, input_shape):
    super().build(input_shape)
    if self.noise == "none":
      return
    self.alpha = self.add_weight(
        name="alpha",
        shape=_alpha_shape(self.noise, self.noisy_weight.shape,
                           self.CHANNEL_AXES),
        initializer=keras.initializers.Constant(self.alpha_init),
        trainable=True,
        dtype=self.dtype,  # the variable dtype: float32 under mixed policies
        # Read as float32 too: the noise scale is a small learned number that
        # bfloat16's 8-bit mantissa would quantise.
        experimental_autocast=False)

  @property
  def noisy_weight(self):
    """The kernel variable that carries the noise and is pruned."""
    return getattr(self, self.KERNEL_ATTRIBUTE)

  def noisy_kernel(self, kernel):
    """Returns the kernel with fresh noise, or `kernel` itself when off."""
    if self.alpha is None or not self.noise_enabled:
      return kernel
    return kernel + self.noise_term(kernel)

  def noise_term(self, kernel):
    """The random part of `noisy_kernel` alone: alpha * eta * (kernel != 0).

    Same distribution as `noisy_kernel(kernel) - kernel`. Its ops carry the
    name scope `NOISE_SCOPE`, so an exporter can find the noise path.
    """
    with tf.name_scope(NOISE_SCOPE):
      kernel32 = tf.cast(kernel, tf.float32)
      std = tf.stop_gradient(kernel_std(kernel32, self.noise_std))
      if self.kept_draw and self.alpha is not None:
        return tf.cast(self._kept_noise(kernel32, std), kernel.dtype)
      eta = tf.stop_gradient(
          tf.random.normal(tf.shape(kernel32), dtype=tf.float32) * std)
      # Pruned weights are removed from the network, so they get no noise
      # either. A select rather than a multiply by a cast mask: a converter
      # folds the mask into a 1-byte bool constant instead of a float32 one.
      noise = tf.where(tf.not_equal(kernel32, 0.0), self.alpha * eta,
                       tf.zeros_like(kernel32))
      return tf.cast(noise, kernel.dtype)

  def _kept_noise(self, kernel32, std):
    """`noise_term` drawing eta for the kept weights only (export; see `set_kept_draw`).

    The random op is what a noisy export spends its time on, and a pruned
    weight's draw is thrown away, so only as many normals are drawn as there
    are kept weights and they are scattered to the kept positions. Each kept
    weight still gets its own independent N(0, std^2) times its alpha and
    each pruned one exactly 0: the distribution of the full draw. The zero
    pattern is read from the weights when the graph is traced.
    """
    with tf.init_scope():
      kept = np.flatnonzero(self.noisy_weight.numpy())
    if kept.size == 0:
      return tf.zeros_like(kernel32)
    # The positions travel as gaps between kept weights: 2 bytes each where
    # they fit, and the run-time sum below restores them.
    gaps = np.diff(kept, prepend=-1)
    gaps = gaps.astype(np.int16 if gaps.max() <= np.iinfo(np.int16).max
                       else np.int32)
    eta = tf.random.normal([kept.size], dtype=tf.float32)
    # The select is decided at run time only (a draw is always finite), so
    # the converter cannot fold the widening and the sum into an int32
    # constant of the positions: the file keeps the 2-byte gaps.
    live = tf.math.is_finite(eta[0])
    gaps = tf.where(live, tf.constant(gaps), tf.constant(0, gaps.dtype))
    position = tf.cumsum(tf.cast(gaps, tf.int32)) - 1
    drawn = tf.scatter_nd(position[:, None], eta,
                          [kernel32.shape.num_elements()])
    # alpha * std is folded into one constant; it scales the whole kernel, so
    # its gradient is eta as in `noise_term`.
    return tf.stop_gradient(tf.reshape(drawn, tf.shape(kernel32))) * (
        self.alpha * std)

  def _split_active(self):
    return self.noise_split and self.alpha is not None and self.noise_enabled

  def get_prunable_weights(self):
    return [self.noisy_weight]

  def get_config(self):
    return {**super().get_config(), "noise": self.noise,
            "alpha_init": self.alpha_init, "noise_enabled": self.noise_enabled,
            "noise_std": self.noise_std}


@keras.saving.register_keras_serializable(package="rsr_tf")
class NoisyConv2D(_WeightNoise, keras.layers.Conv2D,
                  tfmot.sparsity.keras.PrunableLayer):
  """Conv2D whose kernel carries PNI-W noise on every call, training or not.

  Args:
    noise: "channel" (one alpha per output filter, PNI's best), "layer",
      "element", or "none" (a plain Conv2D).
    alpha_init: starting value of the learnable noise scale alpha.
    noise_enabled: when False the layer is deterministic (ablations, export).
    **kwargs: forwarded to `keras.layers.Conv2D`.
  """

  def convolution_op(self, inputs, kernel):
    if self._split_active():
      # conv(x, w + n) == conv(x, w) + conv(x, n): w stays a constant filter.
      with tf.name_scope(NOISE_SCOPE):
        noise_out = super().convolution_op(inputs, self.noise_term(kernel))
      return super().convolution_op(inputs, kernel) + noise_out
    return super().convolution_op(inputs, self.noisy_kernel(kernel))


@keras.saving.register_keras_serializable(package="rsr_tf")
class NoisyDense(_WeightNoise, keras.layers.Dense,
                 tfmot.sparsity.keras.PrunableLayer):
  """Dense layer with PNI-W noise on its kernel; arguments as `NoisyConv2D`."""

  def call(self, inputs):
    inputs = tf.cast(inputs, self.compute_dtype)
    if self._split_active():
      kernel = tf.cast(self.kernel, self.compute_dtype)
      with tf.name_scope(NOISE_SCOPE):
        noise_out = tf.matmul(inputs, self.noise_term(kernel))
      outputs = tf.matmul(inputs, kernel) + noise_out
    else:
      outputs = tf.matmul(inputs, self.noisy_kernel(
          tf.cast(self.kernel, self.compute_dtype)))
    if self.use_bias:
      outputs = tf.nn.bias_add(outputs, tf.cast(self.bias, self.compute_dtype))
    if self.activation is not None:
      outputs = self.activation(outputs)
    return outputs


@keras.saving.register_keras_serializable(package="rsr_tf")
class NoisyDepthwiseConv2D(_WeightNoise, keras.layers.DepthwiseConv2D,
                           tfmot.sparsity.keras.PrunableLayer):
  """DepthwiseConv2D with PNI-W noise on its depthwise kernel.

  In "channel" mode alpha has shape [in, depth_multiplier]: one per output
  channel. With `noise="none"` it is a plain depthwise convolution that
  tfmot can prune (tfmot's own registry prunes nothing of a DepthwiseConv2D).
  Arguments as `NoisyConv2D`.
  """

  KERNEL_ATTRIBUTE = "depthwise_kernel"
  CHANNEL_AXES = 2

  def _depthwise(self, inputs, kernel):
    return keras.backend.depthwise_conv2d(
        inputs, kernel, strides=self.strides, padding=self.padding,
        dilation_rate=self.dilation_rate, data_format=self.data_format)

  def call(self, inputs):
    kernel = self.depthwise_kernel
    if self._split_active():
      with tf.name_scope(NOISE_SCOPE):
        noise_out = self._depthwise(inputs, self.noise_term(kernel))
      outputs = self._depthwise(inputs, kernel) + noise_out
    else:
      outputs = self._depthwise(inputs, self.noisy_kernel(kernel))
    if self.use_bias:
      outputs = keras.backend.bias_add(outputs, self.bias,
                                       data_format=self.data_format)
    if self.activation is not None:
      return self.activation(outputs)
    return outputs


@keras.saving.register_keras_serializable(package="rsr_tf")
class ChannelPadShortcut(keras.layers.Layer):
  """ResNet option-A shortcut: subsample by `stride`, zero-pad new channels.

  Parameter-free, so a pruned CIFAR ResNet-20 keeps the paper's 0.27M weights.
  """

  def __init__(self, filters, stride=2, **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.stride = int(stride)

  def call(self, inputs):
    x = inputs[:, ::self.stride, ::self.stride, :]
    extra = self.filters - x.shape[-1]
    if extra < 0:
      raise ValueError(
          f"ChannelPadShortcut filters={self.filters} is fewer than the "
          f"input's {x.shape[-1]} channels")
    return tf.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])

  def get_config(self):
    return {**super().get_config(), "filters": self.filters,
            "stride": self.stride}


def noisy_layers(model):
  """Every noisy layer in `model`, looking inside pruning wrappers and sub-models."""
  found = []
  for layer in model.layers:
    inner = getattr(layer, "layer", layer)  # tfmot's PruneLowMagnitude
    if isinstance(inner, _WeightNoise):
      found.append(inner)
    elif isinstance(inner, keras.Model):
      found.extend(noisy_layers(inner))
  return found


def _drop_traced_functions(model):
  """Forgets `model`'s traced train/test/predict functions.

  The noise switches are Python attributes read when a function is traced.
  """
  for attr in ("train_function", "test_function", "predict_function"):
    if hasattr(model, attr):
      setattr(model, attr, None)


def set_noise_enabled(model, enabled):
  """Turns test-time noise on or off in every noisy layer of `model`.

  The switch is read when a function is traced, so this also drops the
  model's cached train/test/predict functions.
  """
  for layer in noisy_layers(model):
    layer.noise_enabled = bool(enabled)
  _drop_traced_functions(model)


def set_noise_std(model, over):
  """Takes every noisy layer's sigma over "all" its weights or the "kept" ones.

  A phase-2 setting: after pruning, "all" counts the pruned zeros. Dropped
  cached functions, as `set_noise_enabled`.
  """
  if over not in NOISE_STD:
    raise ValueError(f"noise_std must be one of {', '.join(NOISE_STD)}, got "
                     f"{over!r}")
  for layer in noisy_layers(model):
    layer.noise_std = over
  _drop_traced_functions(model)


@contextlib.contextmanager
def noise_enabled_as(model, enabled):
  """`set_noise_enabled(model, enabled)` inside the block, then as it was."""
  before = [layer.noise_enabled for layer in noisy_layers(model)]
  set_noise_enabled(model, enabled)
  try:
    yield model
  finally:
    for layer, was in zip(noisy_layers(model), before):
      layer.noise_enabled = was
    _drop_traced_functions(model)


def set_noise_split(model, enabled):
  """Export only: computes each noisy layer as conv(x, w) + conv(x, noise).

  The sum equals conv(x, w + noise) for the same draw, so the model's outputs
  keep their distribution, but the kernel `w` now reaches its convolution as
  a constant that a converter can quantise and sparse-encode, and only the
  noise path has a filter computed at run time. Training never sets this and
  it is not saved with the model. Like `set_noise_enabled`, it is read when
  a function is traced, so cached functions are dropped.
  """
  for layer in noisy_layers(model):
    layer.noise_split = bool(enabled)
  _drop_traced_functions(model)


def set_kept_draw(model, enabled):
  """Export only: each noisy layer draws normals for its kept weights alone.

  After an 85% prune that is 0.15x the random numbers per inference, the
  cost that dominates a noisy export, with the same distribution of noise
  (`_WeightNoise._kept_noise`). The zero pattern is taken from the weights
  when a function is traced, so set this on a model whose masks are final
  (stripped); cached functions are dropped, as `set_noise_enabled` does.
  """
  for layer in noisy_layers(model):
    layer.kept_draw = bool(enabled)
  _drop_traced_functions(model)


def alphas(model):
  """The noise-scale variables of `model` (empty when noise is 'none')."""
  return [layer.alpha for layer in noisy_layers(model) if layer.alpha is not None]


# Each plain Keras layer that has a PNI-W twin, and the twin: the one list
# of what `add_weight_noise` converts and what pruning covers.
NOISY_TWINS = {
    keras.layers.Conv2D: NoisyConv2D,
    keras.layers.DepthwiseConv2D: NoisyDepthwiseConv2D,
    keras.layers.Dense: NoisyDense,
}
NOISY_LAYER_TYPES = tuple(NOISY_TWINS.values())

CUSTOM_OBJECTS = {
    "NoisyConv2D": NoisyConv2D,
    "NoisyDepthwiseConv2D": NoisyDepthwiseConv2D,
    "NoisyDense": NoisyDense,
    "ChannelPadShortcut": ChannelPadShortcut,
}
