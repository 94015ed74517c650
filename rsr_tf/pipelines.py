"""tf.data pipelines over an in-memory `data.Split`: shuffled, augmented batches in [0, 1]."""

from typing import Optional

import tensorflow as tf

from rsr_tf.data import Split

# Zero padding on each side before the random crop, as in the usual CIFAR
# recipe.
CROP_PAD = 4


def augment_batch(images: tf.Tensor,
                  seed_generator: Optional[tf.random.Generator] = None
                  ) -> tf.Tensor:
  """Random pad-4 crop and horizontal flip of a whole batch at once.

  Args:
    images: [B, H, W, C] tensor (any dtype; the pipeline passes uint8, tests
      float32). The output has the same shape and dtype.
    seed_generator: Source of randomness; None draws from TensorFlow's global
      seed, which also works inside `tf.function`.

  Returns:
    The augmented batch: each image is shifted by up to 4 pixels in each
    direction with zeros filling in, and mirrored with probability 1/2.
  """
  if seed_generator is None:
    seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
  else:
    seed = seed_generator.make_seeds(1)[:, 0]
  return _augment_stateless(images, seed)


def _augment_stateless(images, seed):
  """`augment_batch` with a stateless [2] seed, so tf.data stays repeatable."""
  images = tf.convert_to_tensor(images)
  shape = tf.shape(images)
  batch, height, width = shape[0], shape[1], shape[2]
  padded = tf.pad(images, [[0, 0], [CROP_PAD, CROP_PAD], [CROP_PAD, CROP_PAD],
                           [0, 0]])
  seeds = tf.random.experimental.stateless_split(seed, num=3)
  top = tf.random.stateless_uniform([batch], seeds[0], minval=0,
                                    maxval=2 * CROP_PAD + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform([batch], seeds[1], minval=0,
                                     maxval=2 * CROP_PAD + 1, dtype=tf.int32)
  flip = tf.random.stateless_uniform([batch], seeds[2]) < 0.5
  rows = top[:, tf.newaxis] + tf.range(height)[tf.newaxis, :]
  cols = left[:, tf.newaxis] + tf.range(width)[tf.newaxis, :]
  # Flipping the column indices mirrors the crop inside the same gather, so
  # the flip costs no extra pass over the pixels.
  cols = tf.where(flip[:, tf.newaxis], tf.reverse(cols, axis=[1]), cols)
  out = tf.gather(padded, rows, axis=1, batch_dims=1)
  out = tf.gather(out, cols, axis=2, batch_dims=1)
  out.set_shape(images.shape)
  return out


def _shard_by_data(ds):
  """Tells a multi-worker strategy how to split this in-memory pipeline.

  There are no files to hand out, so every worker builds the same seeded
  pipeline and keeps its replicas' part of each global batch. This is what
  tf.distribute falls back to anyway; saying it spares the warning. Nothing
  changes without a strategy.
  """
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return ds.with_options(options)


def _to_float(images):
  return tf.cast(images, tf.float32) * (1.0 / 255.0)


def train_pipeline(split: Split, batch_size: int, seed: int = 0,
                   augment: bool = True) -> tf.data.Dataset:
  """Shuffled, augmented training batches.

  Each iteration (epoch) reshuffles and redraws the augmentation, both
  repeatably from `seed`. Only full batches are produced.

  Args:
    split: The training split.
    batch_size: Examples per batch; under a distribution strategy the global
      batch, which Keras splits over the replicas.
    seed: Seed for the shuffle and the augmentation.
    augment: Whether to apply the random crop and flip.

  Returns:
    A dataset of (float32 images [B, H, W, C] in [0, 1], int64 labels [B]).
  """
  n = len(split)
  # Shuffling indices and gathering whole batches keeps the pixels as one
  # uint8 tensor and avoids per-image work; floats appear only per batch.
  images = tf.constant(split.images)
  labels = tf.constant(split.labels)
  ds = tf.data.Dataset.range(n).shuffle(n, seed=seed,
                                        reshuffle_each_iteration=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  if augment:
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip(ds, seeds.batch(2))

    def make_batch(index, aug_seed):
      batch = _augment_stateless(tf.gather(images, index), aug_seed)
      return _to_float(batch), tf.gather(labels, index)
  else:

    def make_batch(index):
      return _to_float(tf.gather(images, index)), tf.gather(labels, index)

  ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
  return _shard_by_data(ds.prefetch(tf.data.AUTOTUNE))


def eval_pipeline(split: Split, batch_size: int) -> tf.data.Dataset:
  """Batches in order, no augmentation, last partial batch kept.

  Args:
    split: The split to evaluate on.
    batch_size: Examples per batch.

  Returns:
    A dataset of (float32 images [B, H, W, C] in [0, 1], int64 labels [B]).
  """
  images = tf.constant(split.images)
  labels = tf.constant(split.labels)
  ds = tf.data.Dataset.range(len(split)).batch(batch_size)
  ds = ds.map(
      lambda index: (_to_float(tf.gather(images, index)),
                     tf.gather(labels, index)),
      num_parallel_calls=tf.data.AUTOTUNE)
  return _shard_by_data(ds.prefetch(tf.data.AUTOTUNE))
