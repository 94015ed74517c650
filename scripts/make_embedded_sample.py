"""Builds rsr_tf/assets/cifar10_sample.npz from a CIFAR-10 JPEG image folder.

The folder must look like IMAGE_FOLDER/train/<class>/*.jpg and
IMAGE_FOLDER/test/<class>/*.jpg (class folders in alphabetical order give the
CIFAR-10 label order). The first files by sorted name are taken from every
class, and their original JPEG bytes are stored, not decoded pixels, which
keeps the file small. Layout of the npz (loads with allow_pickle=False):

  jpeg_bytes     uint8 [total bytes], every JPEG file concatenated
  train_offsets  int64 [N_train + 1], image i is jpeg_bytes[o[i]:o[i + 1]]
  train_labels   int64 [N_train]
  test_offsets   int64 [N_test + 1], offsets into the same jpeg_bytes
  test_labels    int64 [N_test]
  class_names    unicode [num_classes]

Example:
  python scripts/make_embedded_sample.py --image_folder=/tmp/data
"""

import argparse
import os
import sys
import tempfile

import numpy as np

_DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               os.pardir, "rsr_tf", "assets",
                               "cifar10_sample.npz")
_JPEG_EXTENSIONS = (".jpg", ".jpeg")
_JPEG_MAGIC = b"\xff\xd8"


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image_folder", required=True,
                      help="folder with train/<class>/ and test/<class>/ JPEGs")
  parser.add_argument("--train_per_class", type=int, default=200)
  parser.add_argument("--test_per_class", type=int, default=50)
  parser.add_argument("--output", default=os.path.normpath(_DEFAULT_OUTPUT))
  return parser.parse_args(argv)


def _class_names(split_dir):
  if not os.path.isdir(split_dir):
    sys.exit(f"error: {split_dir} is not a directory")
  names = sorted(e.name for e in os.scandir(split_dir)
                 if e.is_dir() and not e.name.startswith("."))
  if not names:
    sys.exit(f"error: {split_dir} has no class folders")
  return names


def _read_split(split_dir, class_names, per_class):
  """Returns ([jpeg bytes, ...], [label, ...]) for the first files per class."""
  blobs, labels = [], []
  for label, name in enumerate(class_names):
    class_dir = os.path.join(split_dir, name)
    files = sorted(f for f in os.listdir(class_dir)
                   if f.lower().endswith(_JPEG_EXTENSIONS))
    if len(files) < per_class:
      sys.exit(f"error: {class_dir} has {len(files)} JPEG files, fewer than "
               f"the {per_class} asked for")
    for file_name in files[:per_class]:
      path = os.path.join(class_dir, file_name)
      with open(path, "rb") as f:
        blob = f.read()
      # The loader decodes with decode_jpeg, so anything else must not slip
      # in under a .jpg name.
      if not blob.startswith(_JPEG_MAGIC):
        sys.exit(f"error: {path} is not a JPEG file")
      blobs.append(blob)
      labels.append(label)
  return blobs, labels


def _offsets(blobs, start):
  sizes = np.array([len(b) for b in blobs], dtype=np.int64)
  return start + np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def main(argv=None):
  args = _parse_args(argv)
  if args.train_per_class < 1 or args.test_per_class < 1:
    sys.exit("error: --train_per_class and --test_per_class must be >= 1")
  train_dir = os.path.join(args.image_folder, "train")
  test_dir = os.path.join(args.image_folder, "test")
  class_names = _class_names(train_dir)
  if _class_names(test_dir) != class_names:
    sys.exit(f"error: {train_dir} and {test_dir} have different class folders")

  train_blobs, train_labels = _read_split(train_dir, class_names,
                                          args.train_per_class)
  test_blobs, test_labels = _read_split(test_dir, class_names,
                                        args.test_per_class)
  train_offsets = _offsets(train_blobs, 0)
  test_offsets = _offsets(test_blobs, int(train_offsets[-1]))
  jpeg_bytes = np.frombuffer(b"".join(train_blobs + test_blobs), dtype=np.uint8)

  output = os.path.abspath(args.output)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  # Write beside the target and rename, so a crash never leaves a truncated
  # sample where the package expects a good one.
  fd, tmp_path = tempfile.mkstemp(prefix=".cifar10_sample.", suffix=".tmp",
                                  dir=os.path.dirname(output))
  try:
    with os.fdopen(fd, "wb") as f:
      # Compression pays off: every JPEG repeats the same ~600 bytes of
      # quantisation and Huffman tables.
      np.savez_compressed(
          f,
          jpeg_bytes=jpeg_bytes,
          train_offsets=train_offsets,
          train_labels=np.array(train_labels, dtype=np.int64),
          test_offsets=test_offsets,
          test_labels=np.array(test_labels, dtype=np.int64),
          class_names=np.array(class_names, dtype=np.str_))
    # mkstemp creates the file private (0600); a packaged asset must be
    # readable by everyone.
    os.chmod(tmp_path, 0o644)
    os.replace(tmp_path, output)
  except BaseException:
    os.unlink(tmp_path)
    raise
  print(f"wrote {output}: {len(train_blobs)} train + {len(test_blobs)} test "
        f"images, {len(class_names)} classes, "
        f"{os.path.getsize(output) / 1e6:.2f} MB")


if __name__ == "__main__":
  main()
