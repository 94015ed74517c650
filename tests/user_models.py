"""Models a user might bring: none of them is an rsr_tf built-in."""

import rsr_tf  # noqa: F401
import tf_keras as keras


def small_cnn(input_shape, num_classes):
  """A factory as `--model=user_models:small_cnn` calls it."""
  inputs = keras.Input(input_shape)
  x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(
      inputs)
  x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
  x = keras.layers.BatchNormalization()(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.Conv2D(16, 1)(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def wide_cnn(input_shape, num_classes):
  """Convs 32 wide, batch norm after each: channel pruning has room to cut."""
  inputs = keras.Input(input_shape)
  x = inputs
  for strides in (2, 1):
    x = keras.layers.Conv2D(32, 3, strides=strides, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def gray_5_class(softmax=False):
  """28x28x1 in, 5 classes: Conv2D, DepthwiseConv2D, batch norm, Dense head."""
  inputs = keras.Input((28, 28, 1))
  x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
  x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same",
                                   depth_multiplier=2)(x)
  # Momentum 0.9: the moving statistics settle within a test's few steps.
  x = keras.layers.BatchNormalization(momentum=0.9)(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  outputs = keras.layers.Dense(5, activation="softmax" if softmax else None)(x)
  return keras.Model(inputs, outputs, name="gray_5_class")


class Subclassed(keras.Model):
  """What tfmot and clone_model cannot see into."""

  def __init__(self):
    super().__init__()
    self.conv = keras.layers.Conv2D(4, 3)
    self.pool = keras.layers.GlobalAveragePooling2D()
    self.head = keras.layers.Dense(3)

  def call(self, x):
    return self.head(self.pool(self.conv(x)))
