"""Kernel penalties against numpy."""

import numpy as np
import pytest
import tensorflow as tf

from rsr_tf import regularizers


def _kernel(shape=(3, 3, 4, 5), seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(3, 3, 4, 5), (7, 2)])
def test_l1_and_group_norms_match_numpy(shape):
  k = _kernel(shape)
  assert float(regularizers.l1_norm(k)) == pytest.approx(np.abs(k).sum(), rel=1e-5)
  per_filter = np.sqrt((k.reshape(-1, shape[-1]) ** 2).sum(axis=0))
  assert float(regularizers.group_norm(k)) == pytest.approx(per_filter.sum(),
                                                            rel=1e-5)


def test_kernel_penalty_matches_numpy_and_round_trips():
  k = _kernel()
  penalty = regularizers.KernelPenalty(lambda_l1=1e-3, lambda_group=2e-3,
                                       weight_decay=5e-4)
  per_filter = np.sqrt((k.reshape(-1, 5) ** 2).sum(axis=0)).sum()
  expected = 1e-3 * np.abs(k).sum() + 2e-3 * per_filter + 0.5 * 5e-4 * (k ** 2).sum()
  assert float(penalty(tf.constant(k))) == pytest.approx(expected, rel=1e-5)
  clone = regularizers.KernelPenalty.from_config(penalty.get_config())
  assert float(clone(tf.constant(k))) == pytest.approx(expected, rel=1e-5)


def test_weight_decay_gradient_is_coupled_l2():
  k = tf.Variable(_kernel())
  with tf.GradientTape() as tape:
    loss = regularizers.KernelPenalty(weight_decay=1e-2)(k)
  np.testing.assert_allclose(tape.gradient(loss, k), 1e-2 * k.numpy(), rtol=1e-5)


def test_group_lasso_gradient_stays_finite_for_a_dead_filter():
  k = tf.Variable(np.zeros((3, 3, 2, 2), np.float32))
  with tf.GradientTape() as tape:
    loss = regularizers.group_norm(k)
  assert np.all(np.isfinite(tape.gradient(loss, k).numpy()))


def test_negative_strength_is_rejected():
  with pytest.raises(ValueError, match="lambda_l1 must be >= 0"):
    regularizers.KernelPenalty(lambda_l1=-1.0)
