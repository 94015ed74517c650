"""rsr_tf.scoring: worst case brackets and paired differences, on planted numbers."""

import numpy as np
import pytest

from rsr_tf import scoring


def test_the_two_worst_cases_bracket_a_noisy_model_and_agree_on_a_fixed_one():
  # Each attack fools example 0 in half the passes (attack 0 in the even ones,
  # attack 1 in the odd ones); neither ever fools example 1. Truly, the better
  # attack leaves example 0 robust half the time. Chosen in-sample, each
  # attack's lucky passes count as strength: 0.5. Cross-fitted, each half picks
  # the attack that won there and scores it where it lost: 1.0.
  lucky = np.array([[[0, 1], [1, 1], [0, 1], [1, 1]],
                    [[1, 1], [0, 1], [1, 1], [0, 1]]], bool)
  assert scoring.worst_case_in_sample(lucky).tolist() == [[0.5, 1.0]]
  assert scoring.worst_case(lucky).mean(axis=0).tolist() == [1.0, 1.0]
  # Without noise the choice is the same on every pass, and so are the two.
  fixed = np.array([[[0, 1, 1]] * 4, [[1, 0, 1]] * 4], bool)
  assert scoring.worst_case_in_sample(fixed).tolist() == [[0, 0, 1]]
  assert scoring.worst_case(fixed).mean(axis=0).tolist() == [0, 0, 1]


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
