"""Built-in networks by name (ResNet-20/18, VGG-16-BN) and the user's own models."""

import warnings

import rsr_tf  # noqa: F401
import numpy as np
import tf_keras as keras

from rsr_tf import channels
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
# The smallest image side each network takes: VGG-16 halves it five times.
MIN_IMAGE_SIDE = {"resnet20": 4, "resnet18": 8, "vgg16": 32}


def build(name, num_classes=10, noise="channel", alpha_init=0.25,
          kernel_regularizer=None, mean=None, std=None,
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
    mean: per-channel mean of the training images, in [0, 1]; None:
      CIFAR-10's for 3 channels, 0.5 otherwise.
    std: per-channel standard deviation of the training images; None:
      CIFAR-10's for 3 channels, 0.25 otherwise.
    input_shape: image shape (height, width, channels), channels last.

  Returns:
    An uncompiled `keras.Model` named after `name`.

  Raises:
    ValueError: unknown model name, an image too small for the network, or
      statistics that do not match the channel count.
  """
  if name not in MODELS:
    raise ValueError(
        f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
  input_shape = tuple(int(d) for d in input_shape)
  if len(input_shape) != 3:
    raise ValueError(f"input_shape must be (height, width, channels), got "
                     f"{list(input_shape)}")
  if min(input_shape[:2]) < MIN_IMAGE_SIDE[name]:
    raise ValueError(
        f"{name} needs images of at least {MIN_IMAGE_SIDE[name]}x"
        f"{MIN_IMAGE_SIDE[name]}, got {input_shape[0]}x{input_shape[1]}; "
        "resize them (--image_size) or pick another model")
  channels = input_shape[2]
  if mean is None:
    mean = CIFAR10_MEAN if channels == 3 else (0.5,) * channels
  if std is None:
    std = CIFAR10_STD if channels == 3 else (0.25,) * channels
  for label, stat in (("mean", mean), ("std", std)):
    if len(stat) != channels:
      raise ValueError(f"{label} has {len(stat)} values for {channels}-channel "
                       "images")
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
CUSTOM_OBJECTS = {**rsr_layers.CUSTOM_OBJECTS, **channels.CUSTOM_OBJECTS,
                  "KernelPenalty": regularizers.KernelPenalty}


def from_spec(spec, input_shape, num_classes, noise="channel",
              alpha_init=0.25, mean=None, std=None):
  """The model a `--model` value names, for `input_shape` images.

  Args:
    spec: a key of `MODELS` (built with the noise and the statistics), a
      saved `PATH.keras` (untrained or pretrained), or `package.module:fn`, a
      factory called as `fn(input_shape=..., num_classes=...)`. A user's
      model takes [0, 1] images (its own normalisation, if any, inside) and
      gets `add_weight_noise(model, noise, alpha_init)` unless noise is
      "none".
    input_shape: (height, width, channels) of the data.
    num_classes: classes in the data.
    noise, alpha_init: PNI-W settings.
    mean, std: the training data's per-channel statistics (built-ins only).

  Raises:
    ValueError: one line saying why the model cannot be used with the data.
  """
  from rsr_tf import config as config_lib  # noqa: E402  (light)
  from rsr_tf import convert  # noqa: E402
  if spec in MODELS:
    return build(spec, num_classes, noise=noise, alpha_init=alpha_init,
                 mean=mean, std=std, input_shape=input_shape)
  if config_lib.is_model_file(spec):
    model = load(spec)
  elif config_lib.is_model_factory(spec):
    model = _call_factory(spec, input_shape, num_classes)
  else:
    raise ValueError(f"--model {spec!r} is neither a built-in "
                     f"({', '.join(MODELS)}), a PATH.keras file nor a "
                     "package.module:function factory")
  try:
    convert.check_functional(model, f"--model {spec}")
  except convert.ModelError as e:
    raise ValueError(str(e)) from None
  if tuple(model.input_shape[1:]) != tuple(input_shape):
    raise ValueError(f"--model {spec} takes inputs of shape "
                     f"{list(model.input_shape[1:])} but the images are "
                     f"{list(input_shape)}; pass --image_size/--channels to "
                     "match, or change the model")
  if len(model.output_shape) != 2 or model.output_shape[-1] != num_classes:
    raise ValueError(f"--model {spec} outputs shape {list(model.output_shape)}; "
                     f"the data has {num_classes} classes, so it must output "
                     f"[N, {num_classes}] logits")
  model = convert.logits_model(model, warn_as=f"--model {spec}")
  if noise != "none":
    model = convert.add_weight_noise(model, noise, alpha_init)
  return model


def _call_factory(spec, input_shape, num_classes):
  import importlib  # noqa: E402
  module_name, _, function_name = spec.partition(":")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"--model {spec}: cannot import {module_name!r} ({e}); "
                     "is its folder on PYTHONPATH?") from e
  factory = getattr(module, function_name, None)
  if not callable(factory):
    raise ValueError(f"--model {spec}: {module_name} has no function "
                     f"{function_name!r}")
  try:
    model = factory(input_shape=tuple(input_shape), num_classes=num_classes)
  except Exception as e:  # the user's code: any error, shown in one line
    raise ValueError(f"--model {spec}: {function_name}(input_shape="
                     f"{tuple(input_shape)}, num_classes={num_classes}) "
                     f"failed: {type(e).__name__}: {e}") from e
  if not isinstance(model, keras.Model):
    raise ValueError(f"--model {spec} returned {type(model).__name__}, not a "
                     "tf_keras Model (build it with `import tf_keras as keras`)")
  return model


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
