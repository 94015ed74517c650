"""Attacks on [0, 1] images, one function each: CleverHans TF2, and our APGD."""

import functools
import math

import rsr_tf  # noqa: F401
import numpy as np
import tensorflow as tf

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


# The threat models, by name: CleverHans's `norm` argument for each.
NORMS = {"linf": np.inf, "l2": 2}


def _norm(norm):
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
  return NORMS[norm]


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


def _dlr_loss(logits, labels):
  """Difference of logits ratio (Croce & Hein 2020): scale-free margin loss."""
  ranked = tf.sort(logits, axis=-1, direction="DESCENDING")
  true = tf.gather(logits, labels, axis=-1, batch_dims=1)
  others = tf.where(tf.one_hot(labels, tf.shape(logits)[-1]) > 0,
                    tf.fill(tf.shape(logits), logits.dtype.min), logits)
  margin = true - tf.reduce_max(others, axis=-1)
  return -margin / (ranked[:, 0] - ranked[:, 2] + 1e-12)


_APGD_LOSSES = {
    "ce": lambda logits, labels: tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=logits),
    "dlr": _dlr_loss,
}


@functools.lru_cache(maxsize=16)
def _expected_loss_and_grad(model_fn, eot_samples, loss):
  """Compiled once per (model, draws, loss): mean loss over noise draws, its
  gradient (EOT), and the mean logits."""
  loss_fn = _APGD_LOSSES[loss]

  @tf.function(reduce_retracing=True)
  def run(x, labels):
    with tf.GradientTape() as tape:
      tape.watch(x)
      # Separate calls, not a tiled batch: each call draws its own weight noise.
      logits = [tf.cast(model_fn(x), tf.float32) for _ in range(eot_samples)]
      losses = tf.add_n([loss_fn(z, labels) for z in logits]) / eot_samples
    return losses, tape.gradient(losses, x), tf.add_n(logits) / eot_samples

  return run


def apgd_checkpoints(steps):
  """Iterations (1-based) at which APGD reviews its step size, with the
  window each review looks back over: windows of 22% of the budget, shrinking
  by 3% per review down to 6% (Croce & Hein 2020, section 3.2)."""
  checkpoints, at = [], 0
  window = max(math.ceil(0.22 * steps), 1)
  shrink, floor = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
  while at + window <= steps:
    at += window
    checkpoints.append((at, window))
    window = max(window - shrink, floor)
  return checkpoints


def _apgd_run(step_fn, x, labels, eps, steps, seed):
  """One APGD run from a random start; returns (images, fooled, loss)."""
  def project(z):
    return tf.clip_by_value(tf.clip_by_value(z, x - eps, x + eps), 0.0, 1.0)

  def per_example(mask):
    return tf.reshape(mask, [-1] + [1] * (len(x.shape) - 1))

  x_k = project(x + tf.random.stateless_uniform(x.shape, seed, -eps, eps))
  loss, grad, logits = step_fn(x_k, labels)
  fooled = tf.argmax(logits, -1, output_type=labels.dtype) != labels
  found = x_k
  best_x, best_grad, best_loss = x_k, grad, loss
  x_prev, last_loss = x_k, loss
  step = tf.fill(tf.shape(labels), 2.0 * eps)
  increases = tf.zeros_like(loss)
  loss_at_review, halved_at_review = loss, tf.zeros_like(fooled)
  reviews = dict(apgd_checkpoints(steps))
  for k in range(1, steps + 1):
    momentum = 1.0 if k == 1 else 0.75
    z = project(x_k + per_example(step) * tf.sign(grad))
    x_prev, x_k = x_k, project(x_k + momentum * (z - x_k)
                               + (1 - momentum) * (x_k - x_prev))
    loss, grad, logits = step_fn(x_k, labels)
    fooled_now = tf.argmax(logits, -1, output_type=labels.dtype) != labels
    found = tf.where(per_example(fooled_now), x_k, found)
    fooled |= fooled_now
    increases += tf.cast(loss > last_loss, tf.float32)
    last_loss = loss
    better = loss > best_loss
    best_x = tf.where(per_example(better), x_k, best_x)
    best_grad = tf.where(per_example(better), grad, best_grad)
    best_loss = tf.maximum(loss, best_loss)
    if k in reviews:
      # Halve where the loss rose in too few steps, or where neither the step
      # nor the best loss moved since the last review; restart from the best.
      stalled = (increases < 0.75 * reviews[k]) | (
          ~halved_at_review & (best_loss <= loss_at_review))
      step = tf.where(stalled, step / 2, step)
      x_k = tf.where(per_example(stalled), best_x, x_k)
      x_prev = tf.where(per_example(stalled), best_x, x_prev)
      grad = tf.where(per_example(stalled), best_grad, grad)
      halved_at_review, loss_at_review = stalled, best_loss
      increases = tf.zeros_like(increases)
  # A noisy model can dodge a point once and not the next time, so an example
  # never seen fooled keeps the highest expected loss found, not its start.
  return tf.where(per_example(fooled), found, best_x), fooled, best_loss


def apgd(model_fn, x, y, eps, loss="ce", steps=100, eot_samples=1, restarts=1,
         num_classes=10, batch_size=128, seed=0):
  """Auto-PGD (Croce & Hein 2020) with EOT over the model's internal noise.

  Every step follows the gradient of the loss averaged over `eot_samples`
  noise draws (AutoAttack's "rand" version). The step size starts at 2 eps
  and halves per example when progress stalls. Per example the result is a
  point the mean-logit prediction got wrong if one was met, otherwise the
  point of highest expected loss: never the random start by default.

  Args:
    model_fn: map from [0, 1] images to logits (stochastic or not); reuse
      one callable, as the compiled step is cached on it.
    x: images in [0, 1], [N, H, W, C] (numpy or tensor).
    y: int labels [N].
    eps: L-inf budget, a python float.
    loss: "ce" (APGD-CE) or "dlr" (APGD-DLR, needs >= 3 classes).
    steps: iterations per restart.
    eot_samples: noise draws averaged per step.
    restarts: random starts; per example a fooling one wins, else the
      highest loss.
    num_classes: width of the logits.
    batch_size: examples per compiled step.
    seed: seed of the random starts.

  Returns:
    numpy adversarial images, within eps of `x`.
  """
  if loss not in _APGD_LOSSES:
    raise ValueError(f"loss must be one of {sorted(_APGD_LOSSES)}, got {loss!r}")
  if loss == "dlr" and num_classes < 3:
    raise ValueError("APGD-DLR needs at least 3 classes")
  _check_static(eps, steps=steps)
  for name, value in (("eot_samples", eot_samples), ("restarts", restarts)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  x = np.asarray(x, np.float32)
  if x.min() < 0 or x.max() > 1:
    raise ValueError("apgd input must be images in [0, 1]")
  if eps == 0.0:
    return x
  step_fn = _expected_loss_and_grad(model_fn, eot_samples, loss)
  out = np.empty_like(x)
  for start in range(0, len(x), batch_size):
    xb = tf.constant(x[start:start + batch_size])
    yb = tf.constant(np.asarray(y[start:start + batch_size], np.int32))
    best, fooled, best_loss = None, None, None
    for restart in range(restarts):
      adv, hit, value = _apgd_run(step_fn, xb, yb, eps, steps,
                                  seed=[seed, start + restart * len(x)])
      if best is None:
        best, fooled, best_loss = adv, hit, value
        continue
      take = (hit & ~fooled) | ((hit == fooled) & (value > best_loss))
      best = tf.where(tf.reshape(take, [-1, 1, 1, 1]), adv, best)
      fooled, best_loss = fooled | hit, tf.where(take, value, best_loss)
    out[start:start + batch_size] = best.numpy()
  return out
