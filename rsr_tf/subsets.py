"""Class-balanced selection: the `*_limit` cuts and the validation hold-out."""

import dataclasses

import numpy as np

from rsr_tf.dataset import DataError, Dataset, Split


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
