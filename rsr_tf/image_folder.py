"""The image-folder source: `root/train/<class>/*`, `root/test/<class>/*`."""

import os
import sys
import time
from typing import Optional

import numpy as np
import tensorflow as tf

from rsr_tf.dataset import DataError, Dataset, Split
from rsr_tf.image_decode import check_channels, collect, conform, decode_any
from rsr_tf.subsets import balanced_subset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


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
  channels = check_channels(channels)
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


def _first_size(files, skip_bad):
  """(height, width) of the first readable file, and that file's path."""
  for path, _ in files:
    try:
      shape = decode_any(tf.io.read_file(path)).shape
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
    images, sizes, converted = collect(_decoded(paths, image_size, channels,
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
    images, sizes, converted = collect(_decoded(paths, image_size, channels,
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
  return ds.map(lambda p: conform(decode_any(tf.io.read_file(p)),
                                  image_size, channels, resize),
                num_parallel_calls=tf.data.AUTOTUNE)


def _decodes(path):
  try:
    decode_any(tf.io.read_file(path))
    return True
  except tf.errors.InvalidArgumentError:
    return False
