"""Loading image classification data (any size, 1 or 3 channels) into memory."""

import dataclasses
import os
import socket
import sys
import threading
import time
from typing import Optional

import numpy as np
from absl import logging as absl_logging
import tensorflow as tf

# Channel counts a model can be trained on; image folders and the embedded
# sample are read as RGB unless asked otherwise.
CHANNEL_CHOICES = (1, 3)
DEFAULT_CHANNELS = 3
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
EMBEDDED_SAMPLE_PATH = os.path.join(os.path.dirname(__file__), "assets",
                                    "cifar10_sample.npz")
# CIFAR-10/100 archives are served from here; tfds downloads them from it.
_DOWNLOAD_HOST = ("www.cs.toronto.edu", 443)
# Images are decoded and converted in chunks of this many, which bounds the
# float32 memory a resize needs.
_CHUNK = 1024
# tfds examples are read in batches this big and concatenated.
_TFDS_BATCH = 8192


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


def load(config) -> Dataset:
  """Loads the data source that `config` selects.

  Args:
    config: An `rsr_tf.config.DataConfig`. `image_folder` wins if set, then
      `embedded_sample`, else the tfds dataset `dataset` in `data_dir`.

  Returns:
    The Dataset, cut to `train_limit`/`eval_limit` examples (0 means all)
    with `balanced_subset`, its images `config.image_size` (None: as
    stored, one size for all) with `config.channels` channels (None: the
    source's own, see each loader).

  Raises:
    DataError: The data is missing, malformed or cannot be downloaded.
  """
  size, channels = config.image_size, config.channels
  if config.image_folder:
    data = load_image_folder(config.image_folder, config.train_limit,
                             config.eval_limit, config.skip_bad_images,
                             image_size=size, channels=channels)
  elif config.embedded_sample:
    data = load_embedded_sample(config.train_limit, config.eval_limit,
                                image_size=size, channels=channels)
  else:
    data = load_tfds(config.dataset, config.data_dir, config.train_limit,
                     config.eval_limit, image_size=size, channels=channels)
  return hold_out(data, config.validation_size) if config.validation_size else data


def hold_out(data: Dataset, n: int) -> Dataset:
  """Moves `n` training images into `data.validation`.

  They are the last images of each class in the training split's order,
  class-balanced (`balanced_subset` from the end), so the held-out set does
  not depend on the seed: every run of a comparison validates on the same
  images, and none of them is ever trained on.

  Raises:
    DataError: `n` leaves fewer than one training image per class.
  """
  labels = data.train.labels
  if n > len(labels) - data.num_classes:
    raise DataError(f"--validation_size={n} leaves too few of the "
                    f"{len(labels)} training images to train on")
  held = len(labels) - 1 - balanced_subset(labels[::-1], n)
  keep = np.ones(len(labels), bool)
  keep[held] = False
  train, held = np.flatnonzero(keep), np.sort(held)
  images = data.train.images
  return dataclasses.replace(data, train=Split(images[train], labels[train]),
                             validation=Split(images[held], labels[held]))


def balanced_subset(labels: np.ndarray, n: int) -> np.ndarray:
  """Picks `n` examples spread as evenly as possible over the classes.

  Classes are visited round-robin in increasing label order, each giving its
  examples in their original order: the k-th example of every class comes
  before the (k+1)-th of any. A class that runs out is skipped. This works the
  same whether `labels` is sorted by class or shuffled.

  Args:
    labels: Integer array [N].
    n: How many to pick; 0 or anything >= N means all.

  Returns:
    int64 indices into `labels`, in round-robin order (original order when
    all are taken).
  """
  labels = np.asarray(labels).reshape(-1)
  total = labels.shape[0]
  if n <= 0 or n >= total:
    return np.arange(total, dtype=np.int64)
  # Rank of each example within its class: a stable sort groups every class
  # while keeping its original order, so rank = position - group start.
  order = np.argsort(labels, kind="stable")
  sorted_labels = labels[order]
  starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
  group_sizes = np.diff(np.r_[starts, total])
  rank = np.empty(total, dtype=np.int64)
  rank[order] = np.arange(total) - np.repeat(starts, group_sizes)
  # lexsort's last key is the primary one.
  picked = np.lexsort((labels, rank))[:n]
  return picked.astype(np.int64)


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
  step = _CHUNK * 32 * 32  # pixels per chunk, whatever the image size
  for begin in range(0, count, step):
    chunk = flat[begin:begin + step].astype(np.float64)
    total += chunk.sum(axis=0)
    total_sq += np.square(chunk).sum(axis=0)
  mean = total / count
  var = np.maximum(total_sq / count - np.square(mean), 0.0)
  return ((mean / 255.0).astype(np.float32),
          (np.sqrt(var) / 255.0).astype(np.float32))


# ---------------------------------------------------------------------------
# Image folder.


def load_image_folder(root: str, train_limit: int = 0, eval_limit: int = 0,
                      skip_bad_images: bool = False,
                      image_size: Optional[tuple] = None,
                      channels: Optional[int] = None) -> Dataset:
  """Loads `root/train/<class>/*` and `root/test/<class>/*` image files.

  Class names are the sorted subfolder names and must be the same in both
  splits. Files are taken in sorted name order; the limits pick files with
  `balanced_subset` before decoding, so only the chosen files are read.

  Args:
    root: Folder holding `train/` and `test/`.
    train_limit: Training examples to keep; 0 means all.
    eval_limit: Test examples to keep; 0 means all.
    skip_bad_images: leave out files that do not decode as images (and say
      how many) instead of stopping at the first with its path.
    image_size: (height, width) every image is resized to (antialiased,
      aspect ratio not kept); None: the images must all share one size.
    channels: 3 (the default: grayscale copied into RGB, alpha dropped) or 1
      (colour converted to luminance).

  Returns:
    The Dataset, with source "image_folder:<root>".

  Raises:
    DataError: The layout is wrong, a class folder has no images, a file
      does not decode and `skip_bad_images` is off, or (without
      `image_size`) the images differ in size.
  """
  if not os.path.isdir(root):
    raise DataError(f"image folder {root} does not exist or is not a "
                    f"directory; expected train/<class>/ and test/<class>/ "
                    f"subfolders in it")
  channels = _check_channels(channels)
  train_classes, train_files = _list_split(root, "train")
  test_classes, test_files = _list_split(root, "test")
  if train_classes != test_classes:
    raise DataError(f"image folder {root}: train/ and test/ have different "
                    f"class folders: train {list(train_classes)} vs test "
                    f"{list(test_classes)}")
  if image_size is None:
    image_size, first = _first_size(train_files, skip_bad_images)
  else:
    first = None
  train = _decode_files(os.path.join(root, "train"), "train", train_files,
                        train_limit, skip_bad_images, image_size, channels,
                        first)
  test = _decode_files(os.path.join(root, "test"), "test", test_files,
                       eval_limit, skip_bad_images, image_size, channels,
                       first)
  return Dataset(train=train, test=test, class_names=train_classes,
                 source=f"image_folder:{root}")


def _check_channels(channels):
  if channels is None:
    return DEFAULT_CHANNELS
  if channels not in CHANNEL_CHOICES:
    raise DataError(f"channels must be one of {CHANNEL_CHOICES}, got "
                    f"{channels}")
  return int(channels)


def _first_size(files, skip_bad):
  """(height, width) of the first readable file, and that file's path."""
  for path, _ in files:
    try:
      shape = _decode_any(tf.io.read_file(path)).shape
    except tf.errors.InvalidArgumentError:
      if skip_bad:
        continue
      raise DataError(f"{path} is not a readable image; remove it or pass "
                      "--skip_bad_images") from None
    return (int(shape[0]), int(shape[1])), path
  raise DataError("no readable image among the training files")


def _list_split(root, split):
  """Returns (class_names, [(path, label), ...]) for `root/split`."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise DataError(f"image folder {root} has no {split}/ subfolder; expected "
                    f"train/<class>/ and test/<class>/ subfolders")
  with os.scandir(split_dir) as entries:
    class_names = tuple(sorted(
        e.name for e in entries if e.is_dir() and not e.name.startswith(".")))
  if not class_names:
    raise DataError(f"{split_dir} has no class folders; expected "
                    f"{split_dir}/<class>/ folders of images")
  files = []
  for label, name in enumerate(class_names):
    class_dir = os.path.join(split_dir, name)
    with os.scandir(class_dir) as entries:
      names = sorted(e.name for e in entries
                     if e.name.lower().endswith(IMAGE_EXTENSIONS) and
                     e.is_file())
    if not names:
      raise DataError(f"class folder {class_dir} has no images "
                      f"({', '.join(IMAGE_EXTENSIONS)})")
    files.extend((os.path.join(class_dir, n), label) for n in names)
  return class_names, files


def _decode_files(split_dir, split, files, limit, skip_bad, image_size,
                  channels, size_reference):
  """Decodes the `balanced_subset` of `files` into a Split.

  `size_reference` is the file whose size every image must have, or None
  when they are resized to `image_size`.
  """
  labels = np.array([label for _, label in files], dtype=np.int64)
  keep = balanced_subset(labels, limit)
  paths = [files[i][0] for i in keep]
  start = time.perf_counter()
  # Printed only once TensorFlow is up, so its start-up log lines do not land
  # in the middle of this one.
  print(f"decoding {len(paths)} {split} images from {split_dir} ...",
        end="", file=sys.stderr, flush=True)
  resize = size_reference is None
  try:
    images, sizes, converted = _collect(_decoded(paths, image_size, channels,
                                                 resize), image_size, channels)
  except tf.errors.InvalidArgumentError:
    print(" a file does not decode; checking each", file=sys.stderr, flush=True)
    bad = [i for i, path in enumerate(paths) if not _decodes(path)]
    if not bad:
      raise
    if not skip_bad:
      raise DataError(
          f"{paths[bad[0]]} is not a readable image ({len(bad)} such files "
          f"among the {len(paths)} {split} files used); remove them or pass "
          "--skip_bad_images") from None
    good = [i for i in range(len(paths)) if i not in set(bad)]
    print(f"skipping {len(bad)} unreadable {split} files, e.g. {paths[bad[0]]}",
          file=sys.stderr, flush=True)
    keep = keep[good]
    paths = [paths[i] for i in good]
    images, sizes, converted = _collect(_decoded(paths, image_size, channels,
                                                 resize), image_size, channels)
  if not resize:
    wrong = np.flatnonzero(np.any(sizes != np.asarray(image_size), axis=1))
    if wrong.size:
      h, w = sizes[wrong[0]]
      print(file=sys.stderr, flush=True)
      raise DataError(
          f"{paths[wrong[0]]} is {h}x{w} but {size_reference} is "
          f"{image_size[0]}x{image_size[1]} ({wrong.size} of the {len(paths)} "
          f"{split} images differ); pass --image_size=H,W to resize them all")
  note = (f"; {converted} converted to {image_size[0]}x{image_size[1]}x"
          f"{channels}" if converted else "")
  print(f" {time.perf_counter() - start:.1f}s{note}", file=sys.stderr,
        flush=True)
  return Split(images=images, labels=labels[keep])


def _decoded(paths, image_size, channels, resize):
  """(uint8 image, its stored [h, w], whether it was converted) per file."""
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, dtype=tf.string))
  return ds.map(lambda p: _conform(_decode_any(tf.io.read_file(p)),
                                   image_size, channels, resize),
                num_parallel_calls=tf.data.AUTOTUNE)


def _decodes(path):
  try:
    _decode_any(tf.io.read_file(path))
    return True
  except tf.errors.InvalidArgumentError:
    return False


def _decode_any(contents):
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


def _conform(image, image_size, channels, resize):
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


def _collect(ds, image_size, channels):
  """A dataset of `_conform` triples -> (images, stored sizes, conversions)."""
  chunks = list(ds.batch(_CHUNK).prefetch(1).as_numpy_iterator())
  if not chunks:
    return (np.zeros((0, *image_size, channels), dtype=np.uint8),
            np.zeros((0, 2), np.int32), 0)
  images = np.concatenate([c[0] for c in chunks], axis=0)
  sizes = np.concatenate([c[1] for c in chunks], axis=0)
  return images, sizes, int(sum(np.count_nonzero(c[2]) for c in chunks))


# ---------------------------------------------------------------------------
# TensorFlow Datasets.


def _download_host_reachable(timeout_s: float = 5.0) -> bool:
  """Whether a TCP connection to the CIFAR download host opens in time.

  The attempt runs in a daemon thread that is abandoned after `timeout_s`
  (plus a little), because DNS resolution ignores socket timeouts and can hang
  far longer when offline.

  Args:
    timeout_s: Seconds to wait for the connection.

  Returns:
    True if the connection opened.
  """
  result = []

  def attempt():
    try:
      with socket.create_connection(_DOWNLOAD_HOST, timeout=timeout_s):
        result.append(True)
    except OSError:
      result.append(False)

  thread = threading.Thread(target=attempt, name="rsr_tf-reachability",
                            daemon=True)
  thread.start()
  thread.join(timeout_s + 1.0)
  return bool(result and result[0])


def load_tfds(name: str, data_dir: Optional[str] = None, train_limit: int = 0,
              eval_limit: int = 0, image_size: Optional[tuple] = None,
              channels: Optional[int] = None) -> Dataset:
  """Loads the 'train' and 'test' splits of a TensorFlow Datasets dataset.

  Any image classification dataset with `image` and `label` features works
  (cifar10, cifar100, svhn_cropped, mnist, fashion_mnist, ...). Downloads
  and prepares the dataset first if needed.

  Args:
    name: tfds name, e.g. "cifar10".
    data_dir: tfds data folder; None means the tfds default.
    train_limit: Training examples to keep; 0 means all.
    eval_limit: Test examples to keep; 0 means all.
    image_size: (height, width) to resize to; None keeps the dataset's own
      size, which must then be fixed.
    channels: 1 or 3; None keeps the dataset's own (mnist: 1).

  Returns:
    The Dataset, with source "tfds:<name>".

  Raises:
    DataError: Unknown dataset, or not prepared and cannot be downloaded.
  """
  # Imported here: it takes seconds and only this source needs it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # tfds warns about a missing variant folder while probing; the one-line
  # error below says the same thing more usefully.
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    prepared = builder.is_prepared()
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"unknown tfds dataset {name!r}; pass a tfds name such as "
                    f"cifar10 or --image_folder=DIR") from e
  finally:
    absl_logging.set_verbosity(verbosity)
  where = data_dir or "the default tfds data_dir"
  if not prepared:
    # Offline, tfds would retry the download for minutes before failing.
    if not _download_host_reachable():
      raise DataError(
          f"tfds dataset {name!r} is not prepared in {where} and its download "
          f"host is unreachable (offline?); pass --image_folder=DIR with a "
          f"train/<class>/, test/<class>/ copy, or --data_dir where it is "
          f"prepared")
    print(f"downloading and preparing tfds dataset {name!r} in {where} ...",
          file=sys.stderr, flush=True)
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      # tfds raises many error types here; the user needs one line, and the
      # chained traceback keeps the detail.
      detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
      raise DataError(f"could not download/prepare tfds dataset {name!r} in "
                      f"{where}: {type(e).__name__}: {detail}") from e

  features = builder.info.features
  if "image" not in features or "label" not in features:
    raise DataError(f"tfds dataset {name!r} has features "
                    f"{', '.join(features.keys())}; rsr_tf needs 'image' and "
                    "'label'")
  label_feature = features["label"]
  class_names = tuple(str(n) for n in label_feature.names)
  stored = tuple(features["image"].shape)
  if channels is None:
    channels = stored[-1] if stored[-1] in CHANNEL_CHOICES else DEFAULT_CHANNELS
  channels = _check_channels(channels)
  if image_size is None:
    if None in stored[:2]:
      raise DataError(f"tfds dataset {name!r} has images of varying size; "
                      "pass --image_size=H,W")
    image_size = stored[:2]
  image_size = tuple(int(d) for d in image_size)
  splits = {}
  for split, limit in (("train", train_limit), ("test", eval_limit)):
    try:
      ds = builder.as_dataset(split=split)
    except (KeyError, ValueError) as e:
      raise DataError(f"tfds dataset {name!r} has no {split!r} split "
                      f"(it has {', '.join(builder.info.splits)})") from e
    ds = ds.map(lambda example: (
        _conform(example["image"], image_size, channels, True)[0],
        example["label"]), num_parallel_calls=tf.data.AUTOTUNE)
    # Not batch_size=-1: that batches by the recorded example count, or by
    # sys.maxsize when the count is unknown (as under tfds.testing.mock_data),
    # which aborts the process.
    chunks = list(tfds.as_numpy(ds.batch(_TFDS_BATCH)))
    if not chunks:
      raise DataError(f"tfds dataset {name!r} split {split!r} is empty")
    images = np.concatenate([c[0] for c in chunks], axis=0)
    labels = np.concatenate([c[1] for c in chunks], axis=0).astype(np.int64)
    keep = balanced_subset(labels, limit)
    splits[split] = Split(images=images[keep], labels=labels[keep])
  return Dataset(train=splits["train"], test=splits["test"],
                 class_names=class_names, source=f"tfds:{name}")


# ---------------------------------------------------------------------------
# Embedded sample.


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
  channels = _check_channels(channels)
  splits = {}
  for split, limit in (("train", train_limit), ("test", eval_limit)):
    offsets = arrays[f"{split}_offsets"].astype(np.int64)
    labels = arrays[f"{split}_labels"].astype(np.int64)
    keep = balanced_subset(labels, limit)
    encoded = [blob[offsets[i]:offsets[i + 1]] for i in keep]
    ds = tf.data.Dataset.from_tensor_slices(
        tf.constant(encoded, dtype=tf.string, shape=[len(encoded)]))
    ds = ds.map(lambda b: _conform(tf.io.decode_jpeg(b, channels=3), size,
                                   channels, True),
                num_parallel_calls=tf.data.AUTOTUNE)
    splits[split] = Split(images=_collect(ds, size, channels)[0],
                          labels=labels[keep])
  class_names = tuple(str(n) for n in arrays["class_names"])
  return Dataset(train=splits["train"], test=splits["test"],
                 class_names=class_names, source="embedded:cifar10_sample")
