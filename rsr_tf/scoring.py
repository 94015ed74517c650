"""Scoring per-example correctness: the worst case over attacks, paired differences.

Numpy only, so scripts/report.py can use it without importing TensorFlow.
A correctness matrix is bool [passes, examples]: one row per noise draw.
"""

import math

import numpy as np


def worst_case(correct):
  """Per example, the attack that does best against it, scored honestly.

  Taking the AND over attacks within a pass would hand the attacker one
  extra noise draw per attack, so a noisy model loses examples to luck.
  Instead the attack is picked per example on half of the passes (even or
  odd) and scored on the other half, and the halves swap (cross-fitting).
  With one pass there is nothing to cross-fit with: the plain AND.

  Args:
    correct: bool [attacks, passes, examples].

  Returns:
    bool [passes, examples]: correct under the attack chosen for it.
  """
  correct = np.asarray(correct, bool)
  attacks, passes, n = correct.shape
  if passes < 2:
    return correct.all(axis=0)
  even = np.arange(passes) % 2 == 0
  out = np.empty((passes, n), bool)
  for pick, score in ((even, ~even), (~even, even)):
    seen = correct[:, pick].mean(axis=1)  # [attacks, examples]
    # Ties (an example every attack fooled, or none did, in the half seen)
    # go to the attack strongest over the whole half, not to the first listed.
    strength = seen.mean(axis=1)
    choice = np.lexsort((np.broadcast_to(strength[:, None], seen.shape), seen),
                        axis=0)[0]
    out[score] = correct[choice, :, np.arange(n)].T[score]
  return out


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


def worst_case_in_sample(correct):
  """Per example, the attack with the lowest mean over every pass: [1, examples].

  Choosing and scoring on the same noisy passes counts an attack's lucky
  draws as strength, so on a noisy model this favours the attacker, where
  worst_case() (chosen on half the passes, scored on the rest) favours the
  model. The two bracket what an attacker with many queries would reach; on
  a deterministic model they agree.

  Args:
    correct: bool [attacks, passes, examples].
  """
  correct = np.asarray(correct, float)
  return correct.mean(axis=1).min(axis=0)[None]
