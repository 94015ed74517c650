"""Accuracy of a (noisy) model on held-out data, clean and under attack."""

import sys
import time

import rsr_tf  # noqa: F401
import numpy as np
import tensorflow as tf

from rsr_tf import attacks


def _correct(labels, logits):
  return tf.reduce_sum(tf.cast(
      tf.equal(tf.argmax(logits, -1), tf.cast(labels, tf.int64)), tf.int64))


def accuracy_over_draws(model, dataset, draws, attack=None, label=""):
  """Accuracy over `draws` independent passes, each with fresh weight noise.

  Args:
    model: maps [0, 1] images to logits; called with `training=False`.
    dataset: finite `tf.data.Dataset` of (images, labels).
    draws: number of passes; a noisy model differs between them.
    attack: None for clean accuracy, or a `config.AttackConfig` for L-inf PGD
      against the true labels, made fresh in every pass against the noisy
      model exactly as it is deployed.
    label: name shown in the progress lines.

  Returns:
    {"mean", "std", "per_draw", "examples"}, accuracies in [0, 1].
  """
  model_fn = attacks.inference_fn(model)

  @tf.function
  def correct(x, y):
    if attack is not None:
      x = attacks.pgd(model_fn, x, y, eps=attack.eps,
                      step_size=attack.step_size, steps=attack.steps,
                      rand_init=attack.rand_init)
    return _correct(y, model_fn(x)), tf.shape(y, out_type=tf.int64)[0]

  per_draw, examples = [], 0
  for draw in range(draws):
    start = time.perf_counter()
    hits, examples = 0, 0
    for x, y in dataset:
      batch_hits, batch_size = correct(x, y)
      hits += int(batch_hits)
      examples += int(batch_size)
    per_draw.append(hits / max(examples, 1))
    print(f"  {label} draw {draw + 1}/{draws}: {per_draw[-1]:.4f} "
          f"({examples} images, {time.perf_counter() - start:.1f}s)",
          file=sys.stderr, flush=True)
  return {"mean": float(np.mean(per_draw)), "std": float(np.std(per_draw)),
          "per_draw": per_draw, "examples": examples}
