"""A tiny trained, pruned, noisy 32x32 model and data for export tests."""

import rsr_tf  # noqa: F401
import numpy as np
import tensorflow as tf
import tf_keras as keras

from rsr_tf import data as data_lib
from rsr_tf import layers as rsr_layers
from rsr_tf import pruning


def colour_split(n, num_classes=3, seed=0):
  """uint8 32x32 images whose class is the brightest channel."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % num_classes
  images = rng.uniform(0, 100, (n, 32, 32, 3))
  images[np.arange(n), :, :, labels] += 120
  return data_lib.Split(images=images.astype(np.uint8),
                        labels=labels.astype(np.int64))


def colour_dataset(train=96, test=96, num_classes=3):
  return data_lib.Dataset(
      train=colour_split(train, num_classes, seed=0),
      test=colour_split(test, num_classes, seed=1),
      class_names=tuple(f"colour{i}" for i in range(num_classes)),
      source="synthetic:colour")


def tiny_model(noise="channel", num_classes=3):
  """Two noisy convs (one with batch norm) and a noisy dense head, 32x32 in."""
  inputs = keras.Input((32, 32, 3), name="image")
  x = rsr_layers.NoisyConv2D(8, 3, strides=2, padding="same", use_bias=False,
                             noise=noise, name="conv1")(inputs)
  x = keras.layers.BatchNormalization(name="bn1")(x)
  x = keras.layers.ReLU()(x)
  x = rsr_layers.NoisyConv2D(16, 3, strides=2, padding="same", noise=noise,
                             name="conv2")(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  logits = rsr_layers.NoisyDense(num_classes, noise=noise, name="head")(x)
  return keras.Model(inputs, logits, name="tiny")


def trained_pruned_model(sparsity=0.6, noise="channel", num_classes=3,
                         epochs=4):
  """`tiny_model` trained on colour data and pruned with tfmot, stripped."""
  model = tiny_model(noise, num_classes)
  split = colour_split(192, num_classes, seed=2)
  images = split.images.astype(np.float32) / 255.0
  pruned = pruning.prune(model, pruning.constant_schedules(
      {layer.name: sparsity for layer in rsr_layers.noisy_layers(model)},
      frequency=1))
  pruned.compile(optimizer=keras.optimizers.Adam(0.02),
                 loss=keras.losses.SparseCategoricalCrossentropy(
                     from_logits=True))
  pruned.fit(images, split.labels, batch_size=32, epochs=epochs, verbose=0,
             callbacks=pruning.callbacks())
  return pruning.strip(pruned)


def save(model, path):
  model.save(str(path))
  return str(path)


def tflite_bytes(model, sparse=False):
  """A TFLite conversion without verification, for runner tests.

  `sparse` gives dynamic-range int8 weights, sparse-encoded: the converter
  leaves float weights of a model this small dense.
  """
  fn = tf.function(lambda image: {"logits": model(image, training=False)},
                   input_signature=[tf.TensorSpec((None, 32, 32, 3),
                                                  tf.float32, name="image")])
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [fn.get_concrete_function()], model)
  if sparse:
    converter.optimizations = [tf.lite.Optimize.DEFAULT,
                               tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
  return converter.convert()
