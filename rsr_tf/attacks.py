"""White-box attacks on [0, 1] images, one function each, over CleverHans TF2."""

import rsr_tf  # noqa: F401
import numpy as np
import tensorflow as tf

try:
  from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
  from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
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


def _check_static(eps, step_size=None, steps=None):
  if not isinstance(eps, float) or eps < 0:
    raise ValueError(f"eps must be a python float >= 0, got {eps!r}")
  if step_size is not None and not (0 <= step_size <= eps):
    raise ValueError(
        f"step_size must be in [0, eps={eps}], got {step_size!r}")
  if steps is not None and (not isinstance(steps, int) or steps < 1):
    raise ValueError(f"steps must be an int >= 1, got {steps!r}")


def _check_pixels(x):
  return [tf.debugging.assert_greater_equal(x, tf.cast(0, x.dtype),
                                            message="attack input below 0"),
          tf.debugging.assert_less_equal(x, tf.cast(1, x.dtype),
                                         message="attack input above 1")]


def fgsm(model_fn, x, y, eps):
  """Fast gradient sign method, L-inf, untargeted.

  Args:
    model_fn: maps images in [0, 1] to logits.
    x: float32 images in [0, 1].
    y: int labels to move away from (true labels or the model's predictions).
    eps: L-inf budget, a python float (CleverHans needs it static).

  Returns:
    Adversarial images in [0, 1], within eps of `x`.
  """
  _check_static(eps)
  with tf.control_dependencies(_check_pixels(x)):
    x = tf.identity(x)
  if eps == 0.0:
    return x
  return fast_gradient_method(model_fn, x, eps, np.inf, clip_min=0.0,
                              clip_max=1.0, y=y, sanity_checks=False)


def pgd(model_fn, x, y, eps, step_size, steps, rand_init=True):
  """Madry et al. projected gradient descent, L-inf, untargeted.

  Args:
    model_fn: maps images in [0, 1] to logits.
    x: float32 images in [0, 1].
    y: int labels to move away from.
    eps: L-inf budget, a python float.
    step_size: per-step size, a python float in [0, eps].
    steps: number of gradient steps.
    rand_init: start from a uniform random point in the eps-ball
      (CleverHans starts at `x` unless told otherwise).

  Returns:
    Adversarial images in [0, 1], within eps of `x`.
  """
  _check_static(eps, step_size, steps)
  with tf.control_dependencies(_check_pixels(x)):
    x = tf.identity(x)
  if eps == 0.0:
    return x
  return projected_gradient_descent(
      model_fn, x, eps, step_size, steps, np.inf, clip_min=0.0, clip_max=1.0,
      y=y, rand_init=rand_init, rand_minmax=eps, sanity_checks=False)
