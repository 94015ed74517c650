"""The TensorFlow Datasets source; fails fast when it cannot download."""

import socket
import sys
import threading
from typing import Optional

import numpy as np
from absl import logging as absl_logging
import tensorflow as tf

from rsr_tf.dataset import DataError, Dataset, Split
from rsr_tf.image_decode import CHANNEL_CHOICES, DEFAULT_CHANNELS
from rsr_tf.image_decode import check_channels, conform
from rsr_tf.subsets import balanced_subset

# CIFAR-10/100 archives are served from here; tfds downloads them from it.
_DOWNLOAD_HOST = ("www.cs.toronto.edu", 443)
# tfds examples are read in batches this big and concatenated.
_TFDS_BATCH = 8192


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
  channels = check_channels(channels)
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
        conform(example["image"], image_size, channels, True)[0],
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
