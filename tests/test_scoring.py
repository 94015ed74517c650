"""rsr_tf.scoring: robust accuracy over attacks, paired differences, noise, on planted numbers."""

import numpy as np
import pytest

from rsr_tf import scoring


def test_all_attacks_is_robust_only_when_every_attack_failed_in_the_same_pass():
  # Example 0 is fooled by attack 0 in pass 0 and by attack 1 in pass 1: it
  # is robust in neither pass, though each attack alone leaves it 50%.
  correct = np.array([[[0, 1, 1], [1, 1, 0]],
                      [[1, 1, 1], [0, 1, 1]]], bool)
  assert scoring.all_attacks(correct).tolist() == [[0, 1, 1], [0, 1, 0]]
  with pytest.raises(ValueError, match="attacks, passes, examples"):
    scoring.all_attacks(correct[0])


def test_unstable_share_counts_examples_right_in_some_passes_only():
  # Example 0 flips, 1 is always right, 2 always wrong, 3 flips.
  correct = np.array([[1, 1, 0, 0], [0, 1, 0, 1], [1, 1, 0, 1]], bool)
  assert scoring.unstable_share(correct) == 0.5
  assert scoring.unstable_share(correct[[1, 1]]) == 0.0
  with pytest.raises(ValueError, match="passes >= 2"):
    scoring.unstable_share(correct[:1])


def test_tolerance_is_the_noise_of_both_plus_one_example():
  a = {"std": 0.03, "examples": 200}
  b = {"std": 0.04, "examples": 500}
  assert scoring.tolerance(a, b) == pytest.approx(2 * 0.05 + 1 / 200)


def test_seed_variance_pools_only_variants_with_two_seeds():
  variance, dof = scoring.pooled_seed_variance([[0.30, 0.34], [0.50], [0.2, 0.2]])
  assert dof == 2 and variance == pytest.approx((0.02 ** 2 * 2) / 2)
  assert scoring.pooled_seed_variance([[0.3]])[1] == 0


def test_paired_difference_counts_only_the_images_that_differ():
  a = np.arange(1000)[None].repeat(3, 0) < 320
  b = np.arange(1000)[None].repeat(3, 0) < 300
  diff, error = scoring.paired_difference(a, b)
  assert diff == pytest.approx(0.02)
  assert error == pytest.approx(np.sqrt(0.02 * 0.98 * 1000 / 999 / 1000))
  # The spread over noise draws adds on: here one pass of b is 2 points up.
  b2 = b.copy()
  b2[0, 300:320] = True
  _, noisy = scoring.paired_difference(a, b2)
  assert noisy > error
  with pytest.raises(ValueError, match="same examples"):
    scoring.paired_difference(a, b[:, :999])
