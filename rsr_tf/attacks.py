"""White-box attacks on [0, 1] images, one function each, over CleverHans TF2."""

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
  x = _checked_input(x, eps)
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
  x = _checked_input(x, eps, step_size, steps)
  if eps == 0.0:
    return x
  return projected_gradient_descent(
      model_fn, x, eps, step_size, steps, np.inf, clip_min=0.0, clip_max=1.0,
      y=y, rand_init=rand_init, rand_minmax=eps, sanity_checks=False)


def mim(model_fn, x, y, eps, step_size, steps, decay=1.0):
  """Momentum iterative method (Dong et al. 2018), L-inf, untargeted.

  Arguments as `pgd`; `decay` is the momentum factor mu.
  """
  x = _checked_input(x, eps, step_size, steps)
  if eps == 0.0:
    return x
  return momentum_iterative_method(
      model_fn, x, eps=eps, eps_iter=step_size, nb_iter=steps, norm=np.inf,
      clip_min=0.0, clip_max=1.0, y=y, decay_factor=decay, sanity_checks=False)


def eot_pgd(model_fn, x, y, eps, step_size, steps, eot_samples, rand_init=True):
  """PGD whose gradient at every step averages `eot_samples` noise draws.

  Expectation over Transformation (Athalye et al. 2018) for a model with
  internal noise: each call of `model_fn` draws fresh noise, so the attack
  follows the expected gradient instead of one noisy sample of it.

  Args:
    model_fn: stochastic map from [0, 1] images to logits.
    x, y, eps, step_size, steps, rand_init: as `pgd`.
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
    # constant, which the sign step of L-inf PGD ignores.
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.tile(labels, [eot_samples]), logits=logits)

  x = _checked_input(x, eps, step_size, steps)
  if eps == 0.0:
    return x
  return projected_gradient_descent(
      stacked_logits, x, eps, step_size, steps, np.inf, loss_fn=summed_loss,
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


class _ExpectedLogits(tf.Module):
  """Mean logits of `samples` noisy passes, compiled once; what ART attacks.

  ART's APGD re-wraps the model it is given and knows nothing of internal
  noise, so the expectation lives in the model itself.
  """

  def __init__(self, model_fn, samples):
    super().__init__()
    self._samples = samples
    self._model_fn = model_fn
    self._mean = tf.function(self._mean_logits)

  def _mean_logits(self, x):
    return tf.add_n([self._model_fn(x) for _ in range(self._samples)]) / float(
        self._samples)

  def __call__(self, x, training=False):
    del training  # attacks always see inference mode
    return self._mean(tf.convert_to_tensor(x, tf.float32))


def apgd(model_fn, x, y, eps, loss="ce", steps=100, eot_samples=1, restarts=1,
         num_classes=10, batch_size=128):
  """Auto-PGD (Croce & Hein 2020) through adversarial-robustness-toolbox.

  With `eot_samples` > 1 the attacked function is the mean of that many
  noisy passes' logits, an expectation over the model's internal noise,
  as AutoAttack's "rand" version does with its EOT iterations.

  Args:
    model_fn: map from [0, 1] images to logits (stochastic or not).
    x: numpy images in [0, 1], [N, H, W, C].
    y: numpy int labels [N].
    eps: L-inf budget, a python float.
    loss: "ce" (APGD-CE) or "dlr" (APGD-DLR).
    steps: iterations per restart.
    eot_samples: noise draws averaged per forward pass.
    restarts: random starts; ART keeps the first that succeeds per example.
    num_classes: width of the logits.
    batch_size: ART's batch size.

  Returns:
    numpy adversarial images, within eps of `x`.
  """
  losses = {"ce": "cross_entropy", "dlr": "difference_logits_ratio"}
  if loss not in losses:
    raise ValueError(f"loss must be one of {sorted(losses)}, got {loss!r}")
  _check_static(eps, steps=steps)
  if not isinstance(eot_samples, int) or eot_samples < 1:
    raise ValueError(f"eot_samples must be an int >= 1, got {eot_samples!r}")
  x = np.asarray(x, np.float32)
  if x.min() < 0 or x.max() > 1:
    raise ValueError("apgd input must be images in [0, 1]")
  if eps == 0.0:
    return x
  import logging  # noqa: E402
  logging.getLogger("art").setLevel(logging.WARNING)  # its import logs paths
  try:
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier
  except ImportError as e:
    raise ImportError("APGD needs adversarial-robustness-toolbox: "
                      "pip install adversarial-robustness-toolbox==1.20.1") from e
  import tf_keras as keras  # noqa: E402  (rsr_tf chose Keras 2 already)
  classifier = TensorFlowV2Classifier(
      model=_ExpectedLogits(model_fn, eot_samples), nb_classes=num_classes,
      input_shape=x.shape[1:], clip_values=(0.0, 1.0),
      loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  attack = AutoProjectedGradientDescent(
      classifier, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps,
      nb_random_init=restarts, batch_size=batch_size, loss_type=losses[loss],
      verbose=False)
  one_hot = np.eye(num_classes, dtype=np.float32)[np.asarray(y, np.int64)]
  return attack.generate(x=x, y=one_hot).astype(np.float32)
