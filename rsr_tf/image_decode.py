"""Decoding images and conforming them to one size and channel count.

Shared by every source: each image becomes uint8 [height, width, channels]
with `conform`, and a tf.data stream of them becomes numpy with `collect`.
"""

import numpy as np
import tensorflow as tf

from rsr_tf.dataset import DataError

# Channel counts a model can be trained on; image folders and the embedded
# sample are read as RGB unless asked otherwise.
CHANNEL_CHOICES = (1, 3)
DEFAULT_CHANNELS = 3
# Images are decoded and converted in chunks of this many, which bounds the
# float32 memory a resize needs.
_CHUNK = 1024


def check_channels(channels):
  """`channels`, or DEFAULT_CHANNELS for None, as an int in CHANNEL_CHOICES."""
  if channels is None:
    return DEFAULT_CHANNELS
  if channels not in CHANNEL_CHOICES:
    raise DataError(f"channels must be one of {CHANNEL_CHOICES}, got "
                    f"{channels}")
  return int(channels)


def decode_any(contents):
  """Any supported file to uint8 [H, W, C] with its own channel count."""
  return tf.io.decode_image(contents, expand_animations=False)


def _to_channels(image, channels):
  """uint8 [H, W, C], C in 1..4 (2: gray + alpha, 4: RGBA), to `channels`."""
  if channels == 3:
    gray, colour = (lambda: tf.tile(image[:, :, :1], [1, 1, 3]),
                    lambda: image[:, :, :3])
  else:
    gray, colour = (lambda: image[:, :, :1],
                    lambda: tf.image.rgb_to_grayscale(image[:, :, :3]))
  static = image.shape[-1]
  if static is not None:  # tfds declares it; tf.cond would trace both ways
    return gray() if static < 3 else colour()
  return tf.cond(tf.shape(image)[2] < 3, gray, colour)


def conform(image, image_size, channels, resize):
  """One decoded image to `channels` and, if `resize`, to `image_size`.

  Without `resize` an image of another size is cropped or padded to
  `image_size` only so that it can be batched; its stored size, returned
  too, is checked afterwards and the load refused.

  Returns:
    (uint8 [height, width, channels], int32 [2] stored size, converted).
  """
  shape = tf.shape(image)
  size = shape[:2]
  converted = tf.not_equal(shape[2], channels)
  image = _to_channels(image, channels)
  other_size = tf.reduce_any(tf.not_equal(size, image_size))
  if resize:
    image = tf.cond(other_size, lambda: _resize_uint8(image, image_size),
                    lambda: image)
    converted = tf.logical_or(converted, other_size)
  else:
    image = tf.image.resize_with_crop_or_pad(image, *image_size)
  image = tf.ensure_shape(image, (*image_size, channels))
  return image, size, converted


def _resize_uint8(images, image_size):
  """Resizes uint8 [..., H, W, C] images to `image_size`, rounding to uint8."""
  # Antialiasing keeps large photos from aliasing when shrunk ~10x.
  resized = tf.image.resize(images, image_size, antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def collect(ds, image_size, channels):
  """A dataset of `conform` triples -> (images, stored sizes, conversions)."""
  chunks = list(ds.batch(_CHUNK).prefetch(1).as_numpy_iterator())
  if not chunks:
    return (np.zeros((0, *image_size, channels), dtype=np.uint8),
            np.zeros((0, 2), np.int32), 0)
  images = np.concatenate([c[0] for c in chunks], axis=0)
  sizes = np.concatenate([c[1] for c in chunks], axis=0)
  return images, sizes, int(sum(np.count_nonzero(c[2]) for c in chunks))
