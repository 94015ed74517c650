"""The in-memory data every source returns: `Split`, `Dataset`, `DataError`.

Also `channel_stats`, the per-channel statistics models normalise with, and
`fingerprint`, what a resumed run checks it trains on the same data.
"""

import dataclasses
import hashlib
from typing import Optional

import numpy as np

# channel_stats converts this many pixels to float64 at a time (1024 32x32
# images' worth), whatever the image size.
_STATS_CHUNK_PIXELS = 1024 * 32 * 32


class DataError(Exception):
  """Bad or unreachable data; its message is one clear line for the user."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split held in memory.

  Attributes:
    images: uint8 array [N, height, width, channels].
    labels: int64 array [N].
  """
  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    shape = tuple(self.images.shape)
    if self.images.dtype != np.uint8 or len(shape) != 4:
      raise ValueError(f"Split.images must be uint8 [N, height, width, "
                       f"channels], got {self.images.dtype} {list(shape)}")
    if self.labels.dtype != np.int64 or self.labels.shape != (shape[0],):
      raise ValueError(f"Split.labels must be int64 [{shape[0]}], got "
                       f"{self.labels.dtype} {list(self.labels.shape)}")

  def __len__(self):
    return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A train and a test split sharing one label space.

  Attributes:
    train: The training split.
    test: The evaluation split.
    class_names: Tuple of str; label i is class_names[i].
    source: Human-readable origin, e.g. "tfds:cifar10".
    validation: Training images held out of `train` (`hold_out`), or None.
  """
  train: Split
  test: Split
  class_names: tuple
  source: str
  validation: Optional[Split] = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple:
    """(height, width, channels) of every image."""
    return tuple(int(d) for d in self.train.images.shape[1:])


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) std of uint8 images in [0, 1] scale.

  Args:
    images: uint8 array [..., C].

  Returns:
    (mean, std), each float32 [C].
  """
  images = np.asarray(images)
  flat = images.reshape(-1, images.shape[-1])
  count = flat.shape[0]
  if count == 0:
    raise ValueError("channel_stats needs at least one pixel")
  total = np.zeros(flat.shape[1], dtype=np.float64)
  total_sq = np.zeros(flat.shape[1], dtype=np.float64)
  # Chunked so 50k images never become a 1.2 GB float64 copy; integer pixel
  # sums are exact in float64, so sum/sum-of-squares loses no precision.
  step = _STATS_CHUNK_PIXELS
  for begin in range(0, count, step):
    chunk = flat[begin:begin + step].astype(np.float64)
    total += chunk.sum(axis=0)
    total_sq += np.square(chunk).sum(axis=0)
  mean = total / count
  var = np.maximum(total_sq / count - np.square(mean), 0.0)
  return ((mean / 255.0).astype(np.float32),
          (np.sqrt(var) / 255.0).astype(np.float32))


def fingerprint(data: Dataset) -> dict:
  """What identifies the data a run trains on, wherever it is stored.

  Class names, image shape, split sizes and a sha256 of every split's labels
  in order: a different folder, limit, hold-out or file order changes it.
  Pixels are left out on purpose: JPEG decoders may round differently on
  other CPUs, and a resume must not be refused for that.
  """
  digest = hashlib.sha256()
  splits = {"train": data.train, "validation": data.validation,
            "test": data.test}
  for name, split in splits.items():
    digest.update(name.encode())
    if split is not None:
      digest.update(np.ascontiguousarray(split.labels, dtype="<i8").tobytes())
  return {"class_names": list(data.class_names),
          "image_shape": list(data.image_shape),
          "examples": {name: len(split) if split is not None else 0
                       for name, split in splits.items()},
          "labels_sha256": digest.hexdigest()}
