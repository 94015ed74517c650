"""Scoring per-example correctness: robust accuracy over attacks, differences, noise.

Numpy only, so scripts/report.py can use it without importing TensorFlow.
A correctness matrix is bool [passes, examples]: one row per noise draw.
"""

import math

import numpy as np

# The eval.json entry of the headline, robust accuracy (all attacks): the
# one name evaluation, model cards and the report read it under.
HEADLINE = "robust_all"


def all_attacks(correct):
  """AutoAttack's rule: robust in a pass only if every attack failed in it.

  An image counts in pass p only if it was classified correctly under each
  attack's p-th pass (clean included, when it is one of the rows). On a
  noisy model each attack's pass is its own noise draw, so every extra
  attack is one more draw for the attacker: compare two models only under
  the same set of attacks.

  Args:
    correct: bool [attacks, passes, examples].

  Returns:
    bool [passes, examples].
  """
  correct = np.asarray(correct, bool)
  if correct.ndim != 3 or correct.shape[0] < 1:
    raise ValueError(f"need [attacks, passes, examples], got {correct.shape}")
  return correct.all(axis=0)


def unstable_share(correct):
  """The share of examples whose outcome changes from one pass to another.

  On a deterministic model only an attack's random start moves an outcome;
  on a noisy one each pass is a fresh draw, and every image that is right in
  some draws and wrong in others can be lost to the all-attacks rule even
  when each attack alone leaves the accuracy unchanged.

  Args:
    correct: bool [passes, examples].
  """
  correct = np.asarray(correct, bool)
  if correct.ndim != 2 or correct.shape[0] < 2:
    raise ValueError(f"need [passes >= 2, examples], got {correct.shape}")
  return float((correct.any(axis=0) & ~correct.all(axis=0)).mean())


def tolerance(a, b):
  """How far two accuracy entries may differ and still agree within noise.

  Two standard deviations of the noise-draw spread of the difference, plus
  one example of granularity. The one rule for "agree within noise" that
  evaluation's checks, export's verification and the report share.

  Args:
    a, b: entries with "std" (over passes) and "examples".
  """
  return 2 * math.hypot(a["std"], b["std"]) + 1 / min(a["examples"], b["examples"])


def paired_tolerance(correct_a, correct_b):
  """`tolerance` for two models scored on the same examples.

  Two standard errors of the paired difference (`paired_difference`), plus
  one example of granularity, so that two deterministic models that differ
  on no image agree.

  Returns:
    (|accuracy of A - accuracy of B|, the largest gap that agrees).
  """
  difference, error = paired_difference(correct_a, correct_b)
  return abs(difference), 2 * error + 1 / np.shape(correct_a)[-1]


def pooled_seed_variance(pairs):
  """Seed-to-seed variance of an accuracy, pooled over variants.

  Args:
    pairs: one sequence of accuracies per variant, one per seed (variants
      with a single seed contribute nothing).

  Returns:
    (variance, degrees of freedom); (nan, 0) with no variant of two seeds.
  """
  total, dof = 0.0, 0
  for values in pairs:
    values = np.asarray(values, float)
    if len(values) >= 2:
      total += float(((values - values.mean()) ** 2).sum())
      dof += len(values) - 1
  return (total / dof, dof) if dof else (float("nan"), 0)


def _draw_variance(correct):
  """Variance of the mean accuracy that comes from the noise draws alone."""
  per_pass = correct.mean(axis=1)
  return per_pass.var(ddof=1) / len(per_pass) if len(per_pass) > 1 else 0.0


def paired_difference(correct_a, correct_b):
  """Accuracy of A minus that of B on the same examples, and its standard error.

  Two models scored on the same images mostly agree on which images are easy,
  so the test-set part of the error is that of the per-example differences,
  far smaller than two independent samples' would be. The spread over noise
  draws is added for each model on top; it already holds some of the
  per-example noise counted in the first term, so the error errs large.

  Args:
    correct_a, correct_b: bool [passes, examples], the same examples in the
      same order (the pass counts may differ).

  Returns:
    (difference, standard error), both as fractions.
  """
  a, b = np.asarray(correct_a, float), np.asarray(correct_b, float)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] < 2:
    raise ValueError(f"need [passes, examples] on the same examples, got "
                     f"{a.shape} and {b.shape}")
  per_example = a.mean(axis=0) - b.mean(axis=0)
  variance = (per_example.var(ddof=1) / len(per_example)
              + _draw_variance(a) + _draw_variance(b))
  return float(per_example.mean()), math.sqrt(variance)
