"""The attack suite: every attack of a config against one classifier, over noise passes.

Attacks come from `rsr_tf.registry`; this module runs them, keeps every
image's correctness in every pass, and scores the headline, robust accuracy
(all attacks).
"""

import math
import os
import sys
import time

import rsr_tf  # noqa: F401
import numpy as np
import tensorflow as tf
import tf_keras as keras

from rsr_tf import registry
from rsr_tf import scoring

HEADLINE = registry.HEADLINE
STRONG_EPS = 64 / 255  # where PGD must bring any model to (almost) zero


def _batches(n, batch_size):
  return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _full_batch(fn, x, y, batch_size):
  """Calls fn on a batch padded to `batch_size`, so a partial last batch does
  not trace the attack's graph a second time; the padding is dropped."""
  n = len(y)
  if n == batch_size:
    return np.asarray(fn(tf.constant(x), tf.constant(y)))
  pad = np.arange(batch_size) % n
  return np.asarray(fn(tf.constant(x[pad]), tf.constant(y[pad])))[:n]


def summary(correct):
  """correct: bool [passes, examples] -> accuracy mean/std over passes."""
  per_draw = correct.mean(axis=1)
  return {"mean": float(per_draw.mean()), "std": float(per_draw.std()),
          "per_draw": [float(a) for a in per_draw],
          "examples": int(correct.shape[1]), "draws": int(correct.shape[0])}


class _Progress:
  """One Keras progress bar per attack, counting batches over all passes."""

  def __init__(self, label, total):
    print(label, file=sys.stderr, flush=True)
    self._bar = keras.utils.Progbar(total, stateful_metrics=["accuracy"],
                                    verbose=2 if os.environ.get("CI") else 1)

  def update(self, accuracy):
    self._bar.add(1, values=[("accuracy", accuracy)])


def measure(target, x, y, draws, label, craft=None, crafted=None,
            batch_size=128):
  """Per-example correctness of `target` over `draws` noisy passes.

  At most one of `craft` (a per-batch function x, y -> x_adv, run again in
  every pass so each pass is a fresh attack) and `crafted` (fixed
  adversarial images; each pass is a fresh noisy look at them) is given;
  neither is clean accuracy.
  """
  n = len(y)
  slices = _batches(n, batch_size)
  correct = np.zeros((draws, n), bool)
  progress = _Progress(label, draws * len(slices))
  for draw in range(draws):
    hits = 0
    for s in slices:
      images = x[s]
      if crafted is not None:
        images = crafted[s]
      elif craft is not None:
        images = _full_batch(craft, images, y[s], min(batch_size, n))
      logits = np.asarray(target.logits_fn(tf.constant(images)))
      correct[draw, s] = logits.argmax(-1) == y[s]
      hits += int(correct[draw, s].sum())
      progress.update(hits / s.stop)
  return correct


def entry(correct, *, kind, eps, crafted, seconds, steps=None, restarts=None,
          eot_samples=None, **extra):
  """One eval.json row: the accuracy over passes and how it was measured."""
  return {**summary(correct), "kind": kind, "eps": eps,
          "eps_255": round(eps * 255, 3), "steps": steps, "restarts": restarts,
          "eot_samples": eot_samples, "crafted": crafted,
          "seconds": round(seconds, 1), **extra}


def robust_all_entry(correct_of, eps, whole_set=None):
  """The headline, robust accuracy (all attacks), or None.

  An image is robust in pass p only if it is classified correctly clean and
  under every whole-set attack in `correct_of` in pass p (`scoring.
  all_attacks`); the entry is the mean and std over passes.

  Args:
    correct_of: {attack: bool [passes, examples]}, "clean" among them.
    eps: the attacks' budget, for the entry.
    whole_set: the attacks that ran on every image (default: every one of
      `correct_of` whose matrix is as wide as clean's).
  """
  if "clean" not in correct_of:
    return None
  n = correct_of["clean"].shape[1]
  names = [a for a in registry.ATTACKS if a in correct_of
           and (a in whole_set if whole_set is not None
                else correct_of[a].shape[1] == n)]
  if len(names) < 2:
    return None
  stacked = np.stack([correct_of[a] for a in names])
  return entry(scoring.all_attacks(stacked), kind="all attacks, per pass",
               eps=eps, crafted=registry.NONE, seconds=0.0, attacks=names)


def _stochastic(target, x):
  probe = tf.constant(x[:min(8, len(x))])
  return not np.array_equal(np.asarray(target.logits_fn(probe)),
                            np.asarray(target.logits_fn(probe)))


def _carried(progress, key, label):
  """The (correct, entry) of `key` finished before a break, or None."""
  done = progress.finished.get(key) if progress else None
  if done:
    print(f"{label}: finished before the break, carried over", file=sys.stderr,
          flush=True)
  return done


def run_suite(target, x, y, config, source=None, progress=None):
  """Runs every attack in `config.attacks` that applies to `target`.

  Args:
    target: the `classifiers.Classifier` under evaluation.
    x: float32 images in [0, 1], [N, H, W, C].
    y: int64 labels [N].
    config: `config.EvalConfig`.
    source: optional differentiable `Classifier` for transfer attacks.
    progress: optional `eval_resume.Progress`: attacks it holds are not run
      again, and each one finished is saved to it.

  Returns:
    {"results": {attack: entry}, "skipped": {attack: reason},
     "eps_sweep": [entry, ...], "stochastic": bool, "per_example": {attack:
     bool [passes, examples]}, "resumed": [keys carried over]}. Every entry
    holds the accuracy mean/std over `config.noise_draws` passes and its
    settings; with `config.sequential`, an attack's entry and matrix are the
    robust accuracy after it (every attack so far, per pass), and "attacked"
    counts the images it ran on.
  """
  tf.random.set_seed(config.seed)
  c, draws, bs = config, config.noise_draws, config.batch_size
  stochastic = _stochastic(target, x)
  ctx = registry.Context(target.logits_fn, source.logits_fn if source else None,
                         c, stochastic)
  results, skipped, sweep, correct_of, whole_set = {}, {}, [], {}, []
  robust = None  # sequential: the AND over every attack so far

  for name in c.attacks:
    if name == registry.EPS_SWEEP:
      continue
    attack = registry.ATTACKS[name]
    reason = _cannot_run(attack, target, source)
    if reason:
      skipped[name] = reason
      continue
    subset = len(y)
    if attack.kind == registry.QUERY and c.blackbox_limit:
      subset = min(c.blackbox_limit, len(y))
    todo = np.arange(subset)
    if c.sequential and robust is not None:
      todo = np.flatnonzero(robust.any(axis=0))  # robust in some pass
    label = attack.label(ctx) + (
        f" on {subset} images" if subset < len(y) else "") + (
        f" ({len(todo)} still robust)" if c.sequential and robust is not None else "")
    done = _carried(progress, name, label)
    if done:
      correct, results[name] = done
    else:
      started = time.perf_counter()
      correct = np.zeros((draws, subset), bool)
      if len(todo):
        correct[:, todo] = _attack(attack, ctx, target, x[todo], y[todo],
                                   draws, bs, label)
      if c.sequential and robust is not None:
        correct &= robust[:, :subset]
      results[name] = entry(
          correct, kind=attack.kind,
          eps=0.0 if attack.kind == registry.CLEAN else c.eps,
          crafted=attack.crafted, seconds=time.perf_counter() - started,
          **attack.budget(ctx),
          **({"attacked": int(len(todo))} if c.sequential else {}))
      if progress:
        progress.save(name, correct, results[name])
    if subset == len(y):
      whole_set.append(name)
      if c.sequential:
        robust = correct if robust is None else robust & correct
    correct_of[name] = correct

  if "square" in results and "pgd" in correct_of:
    # Same images as Square, for the black-box >= white-box check.
    n = results["square"]["examples"]
    results["pgd"]["on_blackbox_subset"] = summary(correct_of["pgd"][:, :n])
  headline = robust_all_entry(correct_of, c.eps, whole_set)
  if headline:
    results[HEADLINE] = headline
  if registry.EPS_SWEEP in c.attacks:
    sweep = _eps_sweep(ctx, target, x, y, results, progress)
  return {"results": results, "skipped": skipped, "eps_sweep": sweep,
          "stochastic": bool(stochastic), "per_example": correct_of,
          "resumed": sorted(progress.finished) if progress else []}


def _cannot_run(attack, target, source):
  if attack.kind == registry.WHITE_BOX and not target.differentiable:
    return (f"{target.name} is not differentiable; white-box attacks need a "
            ".keras or SavedModel twin (see transfer)")
  if attack.kind == registry.TRANSFER:
    if source is None:
      return "no --source_model given"
    if not source.differentiable:
      return f"source {source.name} is not differentiable"
  return None


def _attack(attack, ctx, target, x, y, draws, batch_size, label):
  """bool [draws, len(y)]: correctness under one attack."""
  if attack.crafted == registry.NONE:
    return measure(target, x, y, draws, label, batch_size=batch_size)
  craft = attack.build(ctx)
  if attack.crafted == registry.PER_DRAW:
    return measure(target, x, y, draws, label, craft=craft, batch_size=batch_size)
  print(f"{label}: crafting {len(y)} images", file=sys.stderr, flush=True)
  crafted = np.asarray(craft(x, y), np.float32)
  return measure(target, x, y, draws, label, crafted=crafted,
                 batch_size=batch_size)


def _eps_sweep(ctx, target, x, y, results, progress=None):
  """PGD at each eps of the sweep, plus STRONG_EPS; the step scales with eps."""
  c = ctx.config
  sweep = []
  for point in sorted(set(c.eps_sweep) | {STRONG_EPS if c.norm == "linf"
                                          else 8 * c.eps}):
    if math.isclose(point, c.eps) and "pgd" in results:
      sweep.append({**results["pgd"], "eps": point})
      continue
    key = f"eps_sweep_{point:.8f}"
    label = f"PGD-{c.steps} at eps {point * 255:g}/255"
    done = _carried(progress, key, label)
    if done:
      sweep.append(done[1])
      continue
    started = time.perf_counter()
    step = point * c.step_size / c.eps
    correct = measure(target, x, y, c.noise_draws, label,
                      craft=registry.pgd_craft(ctx, c.steps, eps=point,
                                               step_size=step, restarts=1),
                      batch_size=c.batch_size)
    sweep.append(entry(correct, kind=registry.WHITE_BOX, eps=point,
                       steps=c.steps, restarts=1, crafted=registry.PER_DRAW,
                       step_size=step, seconds=time.perf_counter() - started))
    if progress:
      progress.save(key, correct, sweep[-1])
  return sweep
