"""The embedded source: a small CIFAR-10 sample shipped in rsr_tf/assets."""

import os
from typing import Optional

import numpy as np
import tensorflow as tf

from rsr_tf.dataset import DataError, Dataset, Split
from rsr_tf.image_decode import check_channels, collect, conform
from rsr_tf.subsets import balanced_subset

EMBEDDED_SAMPLE_PATH = os.path.join(os.path.dirname(__file__), "assets",
                                    "cifar10_sample.npz")


def load_embedded_sample(train_limit: int = 0, eval_limit: int = 0,
                         image_size: Optional[tuple] = None,
                         channels: Optional[int] = None) -> Dataset:
  """Loads the small CIFAR-10 sample shipped in `rsr_tf/assets`.

  The sample holds 2000 train (200 per class) and 500 test (50 per class)
  32x32 RGB images as their original JPEG bytes; they are decoded on every
  call.

  Args:
    train_limit: Training examples to keep; 0 means all.
    eval_limit: Test examples to keep; 0 means all.
    image_size: (height, width) to resize to; None keeps 32x32.
    channels: 3 (None) or 1.

  Returns:
    The Dataset, with source "embedded:cifar10_sample".

  Raises:
    DataError: The sample file is missing or malformed.
  """
  path = EMBEDDED_SAMPLE_PATH
  if not os.path.isfile(path):
    raise DataError(f"embedded sample {path} is missing; reinstall rsr_tf or "
                    f"rebuild it with scripts/make_embedded_sample.py")
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in npz.files}
  except (OSError, ValueError) as e:
    raise DataError(f"embedded sample {path} is unreadable: {e}") from e
  needed = ("jpeg_bytes", "train_offsets", "train_labels", "test_offsets",
            "test_labels", "class_names")
  missing = [key for key in needed if key not in arrays]
  if missing:
    raise DataError(f"embedded sample {path} lacks {', '.join(missing)}; "
                    f"rebuild it with scripts/make_embedded_sample.py")
  blob = arrays["jpeg_bytes"].tobytes()
  size = tuple(int(d) for d in image_size) if image_size else (32, 32)
  channels = check_channels(channels)
  splits = {}
  for split, limit in (("train", train_limit), ("test", eval_limit)):
    offsets = arrays[f"{split}_offsets"].astype(np.int64)
    labels = arrays[f"{split}_labels"].astype(np.int64)
    keep = balanced_subset(labels, limit)
    encoded = [blob[offsets[i]:offsets[i + 1]] for i in keep]
    ds = tf.data.Dataset.from_tensor_slices(
        tf.constant(encoded, dtype=tf.string, shape=[len(encoded)]))
    ds = ds.map(lambda b: conform(tf.io.decode_jpeg(b, channels=3), size,
                                  channels, True),
                num_parallel_calls=tf.data.AUTOTUNE)
    splits[split] = Split(images=collect(ds, size, channels)[0],
                          labels=labels[keep])
  class_names = tuple(str(n) for n in arrays["class_names"])
  return Dataset(train=splits["train"], test=splits["test"],
                 class_names=class_names, source="embedded:cifar10_sample")
