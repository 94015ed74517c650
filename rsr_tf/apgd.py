"""Auto-PGD (Croce & Hein 2020): untargeted and targeted, L-inf and L2, EOT."""

import collections
import functools
import itertools
import math

import rsr_tf  # noqa: F401  (before TensorFlow: selects Keras 2)
import numpy as np
import tensorflow as tf

from rsr_tf import registry
from rsr_tf.perturbation import ascent_direction
from rsr_tf.perturbation import fooling_margin
from rsr_tf.perturbation import NORMS
from rsr_tf.perturbation import per_example
from rsr_tf.perturbation import PROJECTIONS
from rsr_tf.perturbation import random_start
from rsr_tf.perturbation import TINY
from rsr_tf.perturbation import true_logit

# The paper's constants (section 3.2): the loss must have risen in at least
# 75% of a window's steps, or the step size halves; momentum weight 0.75.
_RHO = 0.75
_MOMENTUM = 0.75

LOSSES = ("ce", "dlr")

# Both tracks are per example, and in both larger is more adversarial.
_Found = collections.namedtuple("_Found",
                                ["margin_x", "margin", "loss_x", "loss"])
_Found.__doc__ = """What an attack found for each example of a batch.

margin_x, margin: the iterate of largest EOT-mean margin (max other logit
  minus true logit; > 0 means the mean prediction was wrong) and its margin.
loss_x, loss: the iterate of highest expected loss, and that loss.
"""

# The loop variables of one APGD run: the iterate and the one before it, the
# gradient to follow, the per-example step size, the bookkeeping of the
# step-size reviews, and what was found so far.
_State = collections.namedtuple("_State", [
    "x_k", "x_prev", "grad", "step", "last_loss", "rises", "best_grad",
    "loss_at_review", "halved_at_review", "found"])


def apgd_checkpoints(steps):
  """The iterations at which APGD reviews its step size.

  The first window covers 22% of the budget, each next one 3% less, down to
  6%, with the rounding of the reference implementation (fra31/auto-attack),
  so that our numbers are comparable with AutoAttack's.

  Args:
    steps: the iteration budget, an int >= 1.

  Returns:
    A list of (iteration, window) pairs: the 1-based iteration of each review
    and how many steps it looks back over.
  """
  window = max(int(0.22 * steps), 1)
  shrink = max(int(0.03 * steps), 1)
  floor = max(int(0.06 * steps), 1)
  checkpoints, at = [], 0
  while at + window <= steps:
    at += window
    checkpoints.append((at, window))
    window = max(window - shrink, floor)
  return checkpoints


def _review_windows(steps):
  """Per 0-based iteration: the window reviewed after it, 0 for none."""
  windows = [0.0] * steps
  for at, window in apgd_checkpoints(steps):
    windows[at - 1] = float(window)
  return windows


def _ce_loss(logits, labels, targets):
  del targets  # untargeted
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                        logits=logits)


def _dlr_loss(logits, labels, targets):
  """Difference of logits ratio: the margin over (top - third) logit."""
  del targets  # untargeted
  ranked = tf.sort(logits, axis=-1, direction="DESCENDING")
  return fooling_margin(logits, labels) / (ranked[:, 0] - ranked[:, 2] + TINY)


def _targeted_dlr_loss(logits, labels, targets):
  """Targeted DLR: (target - true logit) over (top - mean of 3rd, 4th)."""
  ranked = tf.sort(logits, axis=-1, direction="DESCENDING")
  gap = true_logit(logits, targets) - true_logit(logits, labels)
  return gap / (ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3]) + TINY)


# Loss name -> (per-example loss, fewest classes it is defined for).
_LOSS_FNS = {
    "ce": (_ce_loss, 2),
    "dlr": (_dlr_loss, 3),
    "dlr_targeted": (_targeted_dlr_loss, 4),
}


def _check_labels(labels, num_classes, loss):
  """Raises ValueError unless `loss` is defined and `labels` are classes."""
  fewest = _LOSS_FNS[loss][1]
  if num_classes < fewest:
    raise ValueError(f"APGD with the {loss} loss needs logits of at least "
                     f"{fewest} classes, got {num_classes}")
  if labels.max() >= num_classes:
    raise ValueError(f"y must hold class indices < {num_classes}, got "
                     f"{labels.max()}")


def _num_classes(model_fn, x):
  """The width of the logits, from one eager call on one image.

  Checked before tracing, so that a model of too few classes gets a plain
  one-line error rather than one raised from inside a trace.
  """
  return int(model_fn(tf.constant(x[:1])).shape[-1])


def _eot_mean(draw, eot_samples):
  """The mean of `draw()` (a tuple of tensors) over `eot_samples` calls.

  Separate calls, each drawing the model's noise afresh. The first call
  stays outside the loop, so a model that creates its variables when first
  called does not do it inside a while loop.
  """
  total = draw()
  if eot_samples > 1:
    def body(i, total):
      return i + 1, tf.nest.map_structure(tf.add, total, draw())
    _, total = tf.while_loop(lambda i, _: i < eot_samples, body,
                             (tf.constant(1), total))
  return tf.nest.map_structure(lambda t: t / float(eot_samples), total)


def _keep_better(found, other):
  """Per example and per track, the better of two `_Found`s.

  Ties keep `found`, the earlier one. The same rule merges a new iterate
  into a run, one restart into another, and one target into the next.
  """
  by_margin = other.margin > found.margin
  by_loss = other.loss > found.loss
  return _Found(
      margin_x=tf.where(per_example(by_margin), other.margin_x,
                        found.margin_x),
      margin=tf.maximum(found.margin, other.margin),
      loss_x=tf.where(per_example(by_loss), other.loss_x, found.loss_x),
      loss=tf.maximum(found.loss, other.loss))


def _returned_point(found):
  """The attack's answer: the most adversarial fooling iterate, if any.

  An example whose mean prediction some iterate got wrong gets the iterate of
  largest margin among them; otherwise it gets the point of highest
  expected loss, never the unperturbed image.
  """
  return np.asarray(tf.where(per_example(found.margin > 0), found.margin_x,
                             found.loss_x))


def _run_apgd(evaluate, project, direction, windows, x, eps, start):
  """APGD's iterations from `start` inside one tf.while_loop.

  Args:
    evaluate: image batch -> (expected loss, its gradient, EOT-mean margin).
    project: (z, x, eps) -> the feasible point closest to z.
    direction: gradient -> unit ascent step.
    windows: float32 [steps]: the window reviewed after each step, 0 if none.
    x: the clean images.
    eps: the budget, a float32 scalar.
    start: the first iterate.

  Returns:
    The `_Found` of the run, the start included.
  """
  loss, grad, margin = evaluate(start)
  state = _State(
      x_k=start, x_prev=start, grad=grad, step=2.0 * eps * tf.ones_like(loss),
      last_loss=loss, rises=tf.zeros_like(loss), best_grad=grad,
      loss_at_review=loss,
      # As in the reference: the first review halves only for oscillation.
      halved_at_review=tf.ones_like(loss, tf.bool),
      found=_Found(start, margin, start, loss))

  def body(i, s):
    momentum = tf.where(i == 0, 1.0, _MOMENTUM)
    z = project(s.x_k + per_example(s.step) * direction(s.grad), x, eps)
    x_next = project(s.x_k + momentum * (z - s.x_k)
                     + (1.0 - momentum) * (s.x_k - s.x_prev), x, eps)
    loss, grad, margin = evaluate(x_next)
    best_grad = tf.where(per_example(loss > s.found.loss), grad, s.best_grad)
    found = _keep_better(s.found, _Found(x_next, margin, x_next, loss))
    rises = s.rises + tf.cast(loss > s.last_loss, tf.float32)
    window = tf.gather(windows, i)
    review = window > 0
    # Halve where the loss rose too rarely in the window, or where the last
    # review kept the step and the best loss has not moved since.
    halve = review & ((rises <= _RHO * window) | (
        ~s.halved_at_review & (found.loss <= s.loss_at_review)))
    # A halved example restarts from its best point, without momentum.
    back = per_example(halve)
    return i + 1, _State(
        x_k=tf.where(back, found.loss_x, x_next),
        x_prev=tf.where(back, found.loss_x, s.x_k),
        grad=tf.where(back, best_grad, grad),
        step=tf.where(halve, s.step / 2.0, s.step),
        last_loss=loss,
        rises=tf.where(review, tf.zeros_like(rises), rises),
        best_grad=best_grad,
        loss_at_review=tf.where(review, found.loss, s.loss_at_review),
        halved_at_review=tf.where(review, halve, s.halved_at_review),
        found=found)

  steps = windows.shape[0]
  _, final = tf.while_loop(lambda i, _: i < steps, body,
                           (tf.constant(0), state))
  return final.found


@functools.lru_cache(maxsize=32)
def _compiled_attack(model_fn, norm, loss, steps, eot_samples):
  """One tf.function per (model, settings): a whole APGD run on one batch.

  Its arguments (images, labels, targets, eps, seed) are all tensors, so a
  new eps or seed does not retrace, and callers pad batches to one size.
  """
  loss_fn = _LOSS_FNS[loss][0]
  project = PROJECTIONS[norm]
  windows = tf.constant(_review_windows(steps), tf.float32)

  @tf.function
  def attack(x, labels, targets, eps, seed):
    def draw(images):
      with tf.GradientTape() as tape:
        tape.watch(images)
        logits = tf.cast(model_fn(images), tf.float32)
        losses = loss_fn(logits, labels, targets)
        # Examples do not interact, so the gradient of the sum is each
        # example's own gradient.
        total = tf.reduce_sum(losses)
      return losses, tape.gradient(total, images), logits

    def evaluate(images):
      losses, grad, logits = _eot_mean(lambda: draw(images), eot_samples)
      return losses, grad, fooling_margin(logits, labels)

    start = random_start(x, eps, norm, seed)
    return _run_apgd(evaluate, project,
                     lambda g: ascent_direction(g, norm), windows, x, eps,
                     start)
  return attack


@functools.lru_cache(maxsize=32)
def _compiled_mean_logits(model_fn, eot_samples):
  """One tf.function per (model, draws): logits averaged over the draws."""
  @tf.function
  def mean_logits(x):
    return _eot_mean(lambda: (tf.cast(model_fn(x), tf.float32),),
                     eot_samples)[0]
  return mean_logits


def _check_int(name, value, lowest):
  if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
    raise ValueError(f"{name} must be an int >= {lowest}, got {value!r}")


def _check_static(eps, norm, steps, eot_samples, restarts, batch_size, seed):
  """Raises a one-line ValueError naming the first bad static argument."""
  if not isinstance(eps, float) or not math.isfinite(eps) or eps < 0:
    raise ValueError(f"eps must be a finite python float >= 0, got {eps!r}")
  registry.check_norm(norm)
  for name, value in (("steps", steps), ("eot_samples", eot_samples),
                      ("restarts", restarts), ("batch_size", batch_size)):
    _check_int(name, value, 1)
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"seed must be an int, got {seed!r}")


def _checked_data(x, y):
  """x as float32 [N, H, W, C] in [0, 1] and y as int32 [N], or ValueError."""
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  if x.ndim != 4 or len(x) == 0:
    raise ValueError(f"x must be a non-empty [N, H, W, C] batch, got shape "
                     f"{x.shape}")
  if not np.all((x >= 0) & (x <= 1)):  # NaN fails too
    raise ValueError("x must be images in [0, 1], got values outside it")
  if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"y must be {len(x)} int labels, got {y.dtype} of shape "
                     f"{y.shape}")
  if y.min() < 0:
    raise ValueError(f"y must hold class indices >= 0, got {y.min()}")
  return x, y.astype(np.int32)


def _padded(rows, size):
  """`rows` padded to `size` by repeating its last row (a real example)."""
  return np.pad(rows, [(0, size - len(rows))] + [(0, 0)] * (rows.ndim - 1),
                mode="edge")


def _attack_all(attack, x, labels, targets, eps, restarts, batch, seeds):
  """Runs `attack` over x in batches of `batch`, `restarts` times each.

  Every batch is padded to `batch`, so a partial last one does not retrace.

  Returns:
    The `_Found` over all restarts, as numpy arrays over the examples of x.
  """
  eps = tf.constant(eps, tf.float32)
  parts = []
  for begin in range(0, len(x), batch):
    rows = slice(begin, begin + batch)
    real = len(x[rows])
    xb, yb, tb = (tf.constant(_padded(a[rows], batch))
                  for a in (x, labels, targets))
    found = None
    for _ in range(restarts):
      run = attack(xb, yb, tb, eps, tf.constant(next(seeds), tf.int64))
      found = run if found is None else _keep_better(found, run)
    parts.append([np.asarray(field)[:real] for field in found])
  return _Found(*(np.concatenate(field) for field in zip(*parts)))


def _seed_stream(seed):
  """Distinct stateless seeds, one per compiled run, fixed by `seed`."""
  return ([seed, k] for k in itertools.count())


def apgd(model_fn, x, y, eps, *, norm="linf", loss="ce", steps=100,
         eot_samples=1, restarts=1, batch_size=128, seed=0):
  """Untargeted Auto-PGD (Croce & Hein 2020) with EOT over the model's noise.

  Each step follows the gradient of the loss averaged over `eot_samples`
  separate calls of `model_fn` (AutoAttack's "rand" version, for models that
  draw weight noise on every call). The step size starts at 2 eps and halves
  per example when the loss stops rising; a halved example restarts from its
  best point. Every restart attacks every example.

  The returned point, per example: among all iterates (every step of every
  restart, random starts included) whose EOT-mean logits of that step
  predict a wrong class, the one whose mean margin (largest other logit
  minus true logit) is the largest. If no iterate fooled it, the iterate of
  highest expected loss. So the unperturbed image comes back only when
  nothing differs from it, as with eps = 0.

  Args:
    model_fn: maps float32 images in [0, 1], [N, H, W, C], to logits
      [N, classes]; it may draw new noise on every call. Reuse one callable:
      the compiled attack is cached on it.
    x: images in [0, 1], [N, H, W, C] (numpy or tensor).
    y: int labels [N] to move away from.
    eps: the budget in pixel units of [0, 1] images, a python float >= 0.
    norm: "linf" or "l2".
    loss: "ce" (APGD-CE) or "dlr" (APGD-DLR, needs >= 3 classes).
    steps: iterations per restart.
    eot_samples: model calls averaged per step.
    restarts: random starts.
    batch_size: most examples per compiled run. Runs take min(batch_size,
      N) rows, a partial last batch padded, so one trace serves them all.
    seed: seed of the random starts (the model's own noise follows
      TensorFlow's global seed).

  Returns:
    float32 numpy images, within eps of x in `norm` and inside [0, 1].

  Raises:
    ValueError: for a bad argument, or logits of too few classes for `loss`.
  """
  _check_static(eps, norm, steps, eot_samples, restarts, batch_size, seed)
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
  x, y = _checked_data(x, y)
  _check_labels(y, _num_classes(model_fn, x), loss)
  attack = _compiled_attack(model_fn, norm, loss, steps, eot_samples)
  # Untargeted runs ignore their targets; the labels fill the slot.
  found = _attack_all(attack, x, y, y, eps, restarts, min(batch_size, len(x)),
                      _seed_stream(seed))
  return _returned_point(found)


def _target_classes(mean_logits, labels, count):
  """Per example, its `count` non-true classes of largest mean clean logit.

  Returns:
    int32 [N, min(count, classes - 1)], most likely first.
  """
  count = min(count, mean_logits.shape[1] - 1)
  masked = np.array(mean_logits, np.float64)
  masked[np.arange(len(labels)), labels] = -np.inf
  return np.argsort(-masked, axis=1, kind="stable")[:, :count].astype(np.int32)


def _clean_mean_logits(model_fn, x, eot_samples, batch):
  """Logits of x averaged over `eot_samples` calls, in padded batches."""
  mean_logits = _compiled_mean_logits(model_fn, eot_samples)
  parts = [np.asarray(mean_logits(tf.constant(_padded(x[i:i + batch], batch))))
           [:len(x[i:i + batch])] for i in range(0, len(x), batch)]
  return np.concatenate(parts)


def apgd_targeted(model_fn, x, y, eps, *, norm="linf", steps=100, targets=9,
                  eot_samples=1, restarts=1, batch_size=128, seed=0):
  """Targeted Auto-PGD on the targeted DLR loss (APGD-T of AutoAttack).

  The candidate targets of an example are its min(targets, classes - 1)
  non-true classes of largest clean logit (averaged over `eot_samples`
  calls), most likely first. Each target in turn attacks the examples that
  no earlier target fooled, with `restarts` restarts, so the first target
  that fools an example wins. Within it, the returned point follows `apgd`'s
  rule: the fooling iterate of largest mean margin. An example no target
  fooled gets the point of highest targeted loss over all targets.

  Args:
    model_fn, x, y, eps, norm, steps, eot_samples, restarts, batch_size,
      seed: as in `apgd`.
    targets: most target classes to try per example, an int >= 1.

  Returns:
    float32 numpy images, within eps of x in `norm` and inside [0, 1].

  Raises:
    ValueError: for a bad argument, or logits of fewer than 4 classes (the
      targeted DLR loss reads the 4th largest logit).
  """
  _check_static(eps, norm, steps, eot_samples, restarts, batch_size, seed)
  _check_int("targets", targets, 1)
  x, y = _checked_data(x, y)
  batch = min(batch_size, len(x))
  clean = _clean_mean_logits(model_fn, x, eot_samples, batch)
  num_classes = clean.shape[1]
  _check_labels(y, num_classes, "dlr_targeted")
  ranked = _target_classes(clean, y, targets)
  attack = _compiled_attack(model_fn, norm, "dlr_targeted", steps, eot_samples)
  seeds = _seed_stream(seed)
  found = None
  for rank in range(ranked.shape[1]):
    todo = (np.arange(len(x)) if found is None
            else np.flatnonzero(found.margin <= 0))
    if not todo.size:
      break
    got = _attack_all(attack, x[todo], y[todo], ranked[todo, rank], eps,
                      restarts, batch, seeds)
    if found is None:
      found = got
      continue
    # Nothing in `todo` fooled before, so the larger margin is the new
    # target's point exactly when it fools: the first fooling target wins.
    merged = _keep_better(_Found(*(f[todo] for f in found)), got)
    for field, new in zip(found, merged):
      field[todo] = np.asarray(new)
  return _returned_point(found)
