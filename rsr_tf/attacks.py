"""Attacks on [0, 1] images, one function each, through CleverHans TF2.

Our own attacks, where CleverHans has none, live beside it: rsr_tf.apgd
(APGD-CE, APGD-DLR, APGD-T) and rsr_tf.square (Square).
"""

import functools
import math

import rsr_tf  # noqa: F401
import numpy as np
import tensorflow as tf

from rsr_tf import registry  # the names of the threat models

try:
  from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
  from cleverhans.tf2.attacks.momentum_iterative_method import momentum_iterative_method
  from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
  from cleverhans.tf2.attacks.spsa import spsa as cleverhans_spsa
except ImportError as e:  # pragma: no cover - exercised only on broken installs
  raise ImportError(
      "rsr_tf.attacks needs cleverhans 4.0.0, installed without its unused "
      "dependencies: pip install --no-deps cleverhans==4.0.0") from e


def inference_fn(model):
  """The callable attacks should see: inference mode, noise still on.

  `training=False` matters twice: batch norm uses its moving statistics, and
  tfmot's pruning step only advances on `training=True` calls. Build it once
  per model and reuse it, or every batch retraces.
  """
  return lambda x: model(x, training=False)


# CleverHans's `norm` argument for each threat model of registry.NORMS.
CLEVERHANS_ORD = {"linf": np.inf, "l2": 2}


def _norm(norm):
  registry.check_norm(norm)
  return CLEVERHANS_ORD[norm]


def _check_static(eps, step_size=None, steps=None):
  if not isinstance(eps, float) or eps < 0:
    raise ValueError(f"eps must be a python float >= 0, got {eps!r}")
  if step_size is not None and not (0 <= step_size <= eps):
    raise ValueError(
        f"step_size must be in [0, eps={eps}], got {step_size!r}")
  if steps is not None and (not isinstance(steps, int) or steps < 1):
    raise ValueError(f"steps must be an int >= 1, got {steps!r}")


def _checked_input(x, eps, step_size=None, steps=None):
  """Validates the static arguments, and in-graph that x holds pixels in [0, 1]."""
  _check_static(eps, step_size, steps)
  x = tf.convert_to_tensor(x)
  with tf.control_dependencies([
      tf.debugging.assert_greater_equal(x, tf.cast(0, x.dtype),
                                        message="attack input below 0"),
      tf.debugging.assert_less_equal(x, tf.cast(1, x.dtype),
                                     message="attack input above 1")]):
    return tf.identity(x)


def fgsm(model_fn, x, y, eps, norm="linf"):
  """Fast gradient (sign) method, untargeted.

  Every attack here runs its own code at eps = 0 too (the step is then
  zero), so the check "eps = 0 reproduces clean accuracy" tests that code.

  Args:
    model_fn: maps images in [0, 1] to logits.
    x: float32 images in [0, 1].
    y: int labels to move away from (true labels or the model's predictions).
    eps: budget in [0, 1] pixel units, a python float (CleverHans needs it
      static).
    norm: "linf" (the sign of the gradient) or "l2" (its direction).

  Returns:
    Adversarial images in [0, 1], within eps of `x`.
  """
  x = _checked_input(x, eps)
  return fast_gradient_method(model_fn, x, eps, _norm(norm), clip_min=0.0,
                              clip_max=1.0, y=y, sanity_checks=False)


def pgd(model_fn, x, y, eps, step_size, steps, rand_init=True, norm="linf"):
  """Madry et al. projected gradient descent, untargeted.

  Args:
    model_fn: maps images in [0, 1] to logits.
    x: float32 images in [0, 1].
    y: int labels to move away from.
    eps: budget in [0, 1] pixel units, a python float.
    step_size: per-step size, a python float in [0, eps].
    steps: number of gradient steps.
    rand_init: start from a random point in the eps-ball (CleverHans
      starts at `x` unless told otherwise).
    norm: "linf" or "l2": the ball, and the step (gradient sign or
      normalised gradient).

  Returns:
    Adversarial images in [0, 1], within eps of `x` in `norm`.
  """
  x = _checked_input(x, eps, step_size, steps)
  return projected_gradient_descent(
      model_fn, x, eps, step_size, steps, _norm(norm), clip_min=0.0,
      clip_max=1.0, y=y, rand_init=rand_init, rand_minmax=eps,
      sanity_checks=False)


def mim(model_fn, x, y, eps, step_size, steps, decay=1.0):
  """Momentum iterative method (Dong et al. 2018), L-inf, untargeted.

  Arguments as `pgd`; `decay` is the momentum factor mu.
  """
  x = _checked_input(x, eps, step_size, steps)
  return momentum_iterative_method(
      model_fn, x, eps=eps, eps_iter=step_size, nb_iter=steps, norm=np.inf,
      clip_min=0.0, clip_max=1.0, y=y, decay_factor=decay, sanity_checks=False)


def eot_pgd(model_fn, x, y, eps, step_size, steps, eot_samples, rand_init=True,
            norm="linf"):
  """PGD whose gradient at every step averages `eot_samples` noise draws.

  Expectation over Transformation (Athalye et al. 2018) for a model with
  internal noise: each call of `model_fn` draws fresh noise, so the attack
  follows the expected gradient instead of one noisy sample of it.

  Args:
    model_fn: stochastic map from [0, 1] images to logits.
    x, y, eps, step_size, steps, rand_init, norm: as `pgd`.
    eot_samples: noise draws per gradient step (1 is plain PGD).

  Returns:
    Adversarial images in [0, 1], within eps of `x`.
  """
  if not isinstance(eot_samples, int) or eot_samples < 1:
    raise ValueError(f"eot_samples must be an int >= 1, got {eot_samples!r}")

  def stacked_logits(images):
    return tf.concat([model_fn(images) for _ in range(eot_samples)], axis=0)

  def summed_loss(labels, logits):
    # The gradient of the sum over draws is the EOT gradient times a
    # constant, which the sign step of L-inf PGD and the normalised step of
    # L2 PGD both ignore.
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.tile(labels, [eot_samples]), logits=logits)

  x = _checked_input(x, eps, step_size, steps)
  return projected_gradient_descent(
      stacked_logits, x, eps, step_size, steps, _norm(norm), loss_fn=summed_loss,
      clip_min=0.0, clip_max=1.0, y=tf.cast(y, tf.int64), rand_init=rand_init,
      rand_minmax=eps, sanity_checks=False)


def spsa(model_fn, x, y, eps, steps, samples=64, learning_rate=0.01, delta=0.01):
  """SPSA (Uesato et al. 2018): a query-only attack, gradient-free.

  It estimates the margin loss's gradient from `samples` random +/- probes
  per step, so gradient masking does not stop it. CleverHans runs one image
  at a time, eagerly (its optimizer cannot live inside a tf.function), so
  pass a `tf.function`-wrapped `model_fn` for speed.

  Args:
    model_fn: map from [0, 1] images to logits; only its outputs are used.
    x: images in [0, 1], any batch size (attacked one by one).
    y: int labels.
    eps: L-inf budget, a python float.
    steps: optimisation steps per image.
    samples: probes per step (even).
    learning_rate: Adam step size of the attack.
    delta: probe size.

  Returns:
    Adversarial images, within eps of `x`.
  """
  _check_static(eps, steps=steps)
  if samples < 2 or samples % 2:
    raise ValueError(f"samples must be an even int >= 2, got {samples!r}")
  x = tf.convert_to_tensor(x, tf.float32)
  y = tf.cast(tf.convert_to_tensor(y), tf.int64)
  if eps == 0.0:
    return x
  adversarial = []
  # CleverHans builds its optimizer with the deprecated `lr` argument, and
  # tf_keras warns about it once per image.
  logger = tf.get_logger()
  level = logger.level
  logger.setLevel("ERROR")
  try:
    for i in range(int(x.shape[0])):
      adversarial.append(cleverhans_spsa(
          model_fn, x[i:i + 1], y[i:i + 1], eps, steps, clip_min=0.0,
          clip_max=1.0, learning_rate=learning_rate, delta=delta,
          spsa_samples=samples))
  finally:
    logger.setLevel(level)
  return tf.concat(adversarial, axis=0)
