"""Tiny noisy models, synthetic data and a normality check, so tests stay fast."""

import math

import rsr_tf  # noqa: F401
import numpy as np
import tf_keras as keras

from rsr_tf import layers as rsr_layers


def tiny_model(noise="channel", kernel_regularizer=None, num_classes=3):
  """Two noisy convs and a noisy dense head on 8x8 RGB images."""
  inputs = keras.Input((8, 8, 3))
  x = rsr_layers.NoisyConv2D(8, 3, padding="same", noise=noise, name="conv1",
                             kernel_regularizer=kernel_regularizer)(inputs)
  x = keras.layers.BatchNormalization(name="bn1")(x)
  x = keras.layers.ReLU()(x)
  x = rsr_layers.NoisyConv2D(8, 3, strides=2, padding="same", noise=noise,
                             name="conv2", kernel_regularizer=kernel_regularizer)(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  logits = rsr_layers.NoisyDense(num_classes, noise=noise, name="head",
                                 kernel_regularizer=kernel_regularizer)(x)
  return keras.Model(inputs, logits)


def colour_data(n=96, num_classes=3, seed=0):
  """Images whose class is the brightest channel: learnable in a few steps."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n)
  images = rng.uniform(0.0, 0.4, (n, 8, 8, 3)).astype(np.float32)
  images[np.arange(n), :, :, labels] += 0.5
  return images, labels.astype(np.int64)


def normal_ks_distance(samples):
  """Kolmogorov-Smirnov distance between `samples` and N(0, 1)."""
  x = np.sort(np.asarray(samples, np.float64).ravel())
  cdf = 0.5 * (1.0 + np.array([math.erf(v / math.sqrt(2.0)) for v in x]))
  n = x.size
  return float(max(np.max(np.arange(1, n + 1) / n - cdf),
                   np.max(cdf - np.arange(n) / n)))


def normal_ks_bound(n):
  """The KS distance N(0, 1) samples exceed with probability 0.001 (n large)."""
  return 1.95 / math.sqrt(n)
