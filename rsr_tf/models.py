"""CIFAR ResNet-20, ResNet-18 and VGG-16 (BN) built from noisy layers, by name."""

import warnings

import rsr_tf  # noqa: F401
import numpy as np
import tf_keras as keras

from rsr_tf import layers as rsr_layers
from rsr_tf import regularizers

# Default per-channel statistics of CIFAR-10 in [0, 1]; callers usually pass
# the statistics of their own training data instead.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class _Builder:
  """Makes the noisy conv/dense layers of one model with shared settings."""

  def __init__(self, noise, alpha_init, kernel_regularizer):
    self.noise = noise
    self.alpha_init = alpha_init
    self.kernel_regularizer = kernel_regularizer

  def conv(self, x, filters, kernel_size=3, stride=1, name=None):
    return rsr_layers.NoisyConv2D(
        filters, kernel_size, strides=stride, padding="same", use_bias=False,
        kernel_initializer="he_normal", noise=self.noise,
        alpha_init=self.alpha_init,
        kernel_regularizer=self.kernel_regularizer, name=name)(x)

  def dense(self, x, units, name):
    # float32 logits even under a mixed-precision policy: the loss and the
    # attack's gradients are computed from them.
    return rsr_layers.NoisyDense(
        units, noise=self.noise, alpha_init=self.alpha_init, dtype="float32",
        kernel_regularizer=self.kernel_regularizer, name=name)(x)


def _bn_relu(x, name):
  x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                      name=f"{name}_bn")(x)
  return keras.layers.ReLU(name=f"{name}_relu")(x)


def _basic_block(b, x, filters, stride, shortcut, name):
  out = b.conv(x, filters, stride=stride, name=f"{name}_conv1")
  out = _bn_relu(out, f"{name}_1")
  out = b.conv(out, filters, name=f"{name}_conv2")
  out = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                        name=f"{name}_2_bn")(out)
  if stride != 1 or x.shape[-1] != filters:
    if shortcut == "pad":
      x = rsr_layers.ChannelPadShortcut(filters, stride,
                                        name=f"{name}_shortcut")(x)
    else:
      x = b.conv(x, filters, kernel_size=1, stride=stride,
                 name=f"{name}_shortcut_conv")
      x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                          name=f"{name}_shortcut_bn")(x)
  out = keras.layers.Add(name=f"{name}_add")([out, x])
  return keras.layers.ReLU(name=f"{name}_out")(out)


def _resnet(b, x, num_classes, widths, blocks, shortcut):
  x = b.conv(x, widths[0], name="stem_conv")
  x = _bn_relu(x, "stem")
  for stage, (filters, count) in enumerate(zip(widths, blocks)):
    for i in range(count):
      stride = 2 if (stage > 0 and i == 0) else 1
      x = _basic_block(b, x, filters, stride, shortcut, f"s{stage + 1}b{i + 1}")
  x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  return b.dense(x, num_classes, name="logits")


def resnet20(b, x, num_classes):
  """He et al. (2016) CIFAR ResNet-20: 16/32/64 filters, option-A shortcuts."""
  return _resnet(b, x, num_classes, (16, 32, 64), (3, 3, 3), shortcut="pad")


def resnet18(b, x, num_classes):
  """CIFAR ResNet-18: 3x3 stem, 64..512 filters, 1x1 projection shortcuts."""
  return _resnet(b, x, num_classes, (64, 128, 256, 512), (2, 2, 2, 2),
                 shortcut="conv")


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
          512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(b, x, num_classes):
  """CIFAR VGG-16 with batch norm and a single linear classifier."""
  conv_index = 0
  for item in _VGG16:
    if item == "M":
      x = keras.layers.MaxPooling2D(name=f"pool{conv_index}")(x)
      continue
    conv_index += 1
    x = b.conv(x, item, name=f"conv{conv_index}")
    x = _bn_relu(x, f"conv{conv_index}")
  x = keras.layers.Flatten(name="flatten")(x)
  return b.dense(x, num_classes, name="logits")


MODELS = {"resnet20": resnet20, "resnet18": resnet18, "vgg16": vgg16}


def build(name, num_classes=10, noise="channel", alpha_init=0.25,
          kernel_regularizer=None, mean=CIFAR10_MEAN, std=CIFAR10_STD,
          input_shape=(32, 32, 3)):
  """Builds a functional tf_keras model that maps [0, 1] images to logits.

  Per-channel normalisation is a fixed layer inside the model, so attacks and
  deployments work in pixel space.

  Args:
    name: a key of `MODELS`.
    num_classes: width of the logits.
    noise: PNI-W mode for every conv and dense layer.
    alpha_init: initial noise scale.
    kernel_regularizer: penalty on every conv/dense kernel (never on alpha),
      e.g. `regularizers.KernelPenalty`.
    mean: per-channel mean of the training images, in [0, 1].
    std: per-channel standard deviation of the training images.
    input_shape: image shape, channels last.

  Returns:
    An uncompiled `keras.Model` named after `name`.

  Raises:
    ValueError: unknown model name.
  """
  if name not in MODELS:
    raise ValueError(
        f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
  inputs = keras.Input(shape=input_shape, name="image")
  x = keras.layers.Normalization(
      mean=list(np.asarray(mean, np.float32)),
      variance=list(np.square(np.asarray(std, np.float32))),
      name="normalize")(inputs)
  logits = MODELS[name](_Builder(noise, alpha_init, kernel_regularizer), x,
                        num_classes)
  return keras.Model(inputs, logits, name=name)


# Everything a saved rsr_tf model may name; passed explicitly so loading does
# not depend on which rsr_tf modules happen to be imported already.
CUSTOM_OBJECTS = {**rsr_layers.CUSTOM_OBJECTS,
                  "KernelPenalty": regularizers.KernelPenalty}


def load(path):
  """Loads a saved `.keras` model with Keras safe mode on.

  Safe mode refuses Lambda layers, whose saved Python code would run on load.

  Raises:
    ValueError: one line saying why `path` is not a loadable rsr_tf model.
  """
  try:
    with warnings.catch_warnings():
      # Keras warns that a Lambda layer's module is missing before safe mode
      # refuses the layer; the refusal is the one line worth showing.
      warnings.simplefilter("ignore", UserWarning)
      return keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS,
                                     safe_mode=True, compile=False)
  except Exception as e:  # Keras raises many types for a bad archive
    if "Lambda" in str(e) and "safe_mode" in str(e):
      raise ValueError(f"{path} is refused by Keras safe mode: it holds a "
                       "Lambda layer, whose Python code could do anything "
                       "when loaded; rsr_tf models have none") from e
    if "file signature not found" in str(e):
      raise ValueError(f"{path} is not a Keras model file (neither a .keras "
                       "zip archive nor HDF5)") from e
    raise ValueError(f"{path} is not a loadable .keras model: "
                     f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
