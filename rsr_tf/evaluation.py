"""Robustness evaluation of noisy models: attack suite, noise draws, sanity checks."""

import dataclasses
import math
import os
import sys
import time
from typing import Callable, Optional

import rsr_tf  # noqa: F401
import numpy as np
import tensorflow as tf
import tf_keras as keras

from rsr_tf import attacks
from rsr_tf import convert
from rsr_tf import scoring

STRONG_EPS = 64 / 255  # where PGD must bring any model to (almost) zero


@dataclasses.dataclass
class Classifier:
  """What the evaluation needs to know about a model.

  Attributes:
    name: shown in reports (usually the path).
    logits_fn: images in [0, 1] -> logits. Stochastic models draw new noise
      on every call. For white-box attacks it must be a TensorFlow function
      of its input.
    differentiable: whether gradients of `logits_fn` can be taken.
    num_classes: width of the logits.
    input_shape: (height, width, channels) of the images it takes.
    model: the Keras model behind it, if it is one (for the model card).
  """
  name: str
  logits_fn: Callable
  differentiable: bool
  num_classes: int
  input_shape: tuple = ()
  model: Optional[keras.Model] = None


def from_keras(model, name=None, num_classes=None):
  """A Classifier over a Keras model in inference mode, noise on as deployed.

  `num_classes` defaults to the width of a functional model's output.

  Raises:
    ValueError: the model ends in a softmax (attacks need logits).
  """
  convert.require_logits(model, "evaluation")
  try:
    input_shape = tuple(int(d) for d in model.input_shape[1:])
  except (AttributeError, TypeError):  # subclassed, or a free dimension
    input_shape = ()
  return Classifier(name or model.name, attacks.inference_fn(model), True,
                    num_classes or int(model.output_shape[-1]), input_shape,
                    model)


def _saved_model_fn(path):
  """The serving signature of a SavedModel as a differentiable function."""
  loaded = tf.saved_model.load(path)
  if "serving_default" not in loaded.signatures:
    raise ValueError(f"SavedModel {path} has no serving_default signature")
  signature = loaded.signatures["serving_default"]
  (input_name,) = signature.structured_input_signature[1].keys()
  output_name = next(iter(signature.structured_outputs))

  def logits(x):
    return signature(**{input_name: tf.convert_to_tensor(x, tf.float32)})[output_name]

  logits.loaded = loaded  # keeps the variables alive
  return logits


def _check_classifier_shapes(model, path):
  """Refuses a Keras model that does not map images of one size to logits."""
  try:
    inputs, outputs = model.input_shape, model.output_shape
  except AttributeError:  # a subclassed model without a known input
    raise ValueError(f"{path} holds a model without a known input shape; "
                     "save a functional model") from None
  if (not isinstance(inputs, tuple) or len(inputs) != 4 or None in inputs[1:]
      or not isinstance(outputs, tuple) or len(outputs) != 2):
    raise ValueError(f"{path} is not an image classifier: it maps {inputs} to "
                     f"{outputs}; expected (None, H, W, C) images to "
                     "(None, classes) logits")


def load_classifier(path):
  """Loads a `.keras` file, a SavedModel directory or a `.tflite` file.

  Raises:
    ValueError: one line saying what `path` is and what was expected.
  """
  from rsr_tf import models  # noqa: E402
  if os.path.isdir(path):
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
      raise ValueError(f"{path} is a directory without saved_model.pb; expected a "
                       ".keras file, a SavedModel directory or a .tflite file")
    serve = _saved_model_fn(path)
    (spec,) = serve.loaded.signatures["serving_default"] \
        .structured_input_signature[1].values()
    shape = tuple(spec.shape[1:])
    if len(shape) != 3 or None in shape:
      raise ValueError(f"{path} is not an image classifier: its serving "
                       f"signature takes {list(spec.shape)}; expected "
                       "[N, H, W, C] images")
    try:
      probe = serve(tf.zeros((1,) + shape))
    except (TypeError, ValueError, tf.errors.OpError) as e:
      raise ValueError(f"{path} is not an image classifier: its serving "
                       f"signature fails on {list(shape)} images "
                       f"({type(e).__name__})") from e
    return Classifier(path, serve, True, int(probe.shape[-1]),
                      tuple(int(d) for d in shape))
  if not os.path.isfile(path):
    raise ValueError(f"model file {path} does not exist")
  if path.endswith(".keras"):
    model = models.load(path)  # ValueError: one line
    _check_classifier_shapes(model, path)
    try:
      return from_keras(model, name=path)
    except convert.ModelError as e:
      raise ValueError(str(e)) from None
  if path.endswith(".tflite"):
    from rsr_tf import exporter as export  # noqa: E402  (heavy; only on use)
    try:
      predict = export.load_classifier(path)
    except export.ExportError as e:
      raise ValueError(str(e)) from e
    shape = tuple(predict.input_shape[1:])
    probe = predict(np.zeros((1,) + shape, np.float32))
    return Classifier(path, lambda x: tf.constant(predict(np.asarray(x, np.float32))),
                      False, int(probe.shape[-1]), shape)
  raise ValueError(f"{path}: unknown model format; expected a .keras file, a "
                   "SavedModel directory or a .tflite file")


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


def _summary(correct):
  """correct: bool [draws, examples] -> accuracy mean/std over draws."""
  per_draw = correct.mean(axis=1)
  return {"mean": float(per_draw.mean()), "std": float(per_draw.std()),
          "per_draw": [float(a) for a in per_draw],
          "examples": int(correct.shape[1]), "draws": int(correct.shape[0])}


class _Progress:
  """One Keras progress bar per attack, counting batches over all draws."""

  def __init__(self, label, total):
    print(label, file=sys.stderr, flush=True)
    self._bar = keras.utils.Progbar(total, stateful_metrics=["accuracy"],
                                    verbose=2 if os.environ.get("CI") else 1)

  def update(self, accuracy):
    self._bar.add(1, values=[("accuracy", accuracy)])


def _measure(target, x, y, draws, label, craft=None, crafted=None,
             batch_size=128):
  """Per-example correctness of `target` over `draws` noisy passes.

  Exactly one of `craft` (a function x, y -> x_adv, run again in every draw
  so each draw is a fresh attack) and `crafted` (fixed adversarial images,
  each draw is a fresh noisy look at them) may be given; neither is clean.
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


def _craft_all(craft, x, y, batch_size, label):
  """Adversarial images for the whole set, made once."""
  out = np.empty_like(x)
  slices = _batches(len(y), batch_size)
  progress = _Progress(label, len(slices))
  for s in slices:
    out[s] = _full_batch(craft, x[s], y[s], min(batch_size, len(y)))
    progress.update(0.0)
  return out


def _compiled(fn):
  return tf.function(fn, reduce_retracing=True)


def _entry(correct, *, kind, eps, steps=None, restarts=None, eot_samples=None,
           crafted, seconds, **extra):
  return {**_summary(correct), "kind": kind, "eps": eps,
          "eps_255": round(eps * 255, 3), "steps": steps, "restarts": restarts,
          "eot_samples": eot_samples, "crafted": crafted,
          "seconds": round(seconds, 1), **extra}


def _pgd_craft(model_fn, eps, step_size, steps, restarts):
  """PGD with `restarts` random starts, keeping per example the worst one.

  "Worst" is judged by the model's own loss on one noisy pass, as an attacker
  with query access would; the reported accuracy comes from fresh passes.
  """
  def craft(x, y):
    best = attacks.pgd(model_fn, x, y, eps=eps, step_size=step_size, steps=steps)
    if restarts == 1:
      return best
    best_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        tf.cast(y, tf.int64), model_fn(best))
    for _ in range(restarts - 1):
      candidate = attacks.pgd(model_fn, x, y, eps=eps, step_size=step_size,
                              steps=steps)
      loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
          tf.cast(y, tf.int64), model_fn(candidate))
      better = loss > best_loss
      best = tf.where(better[:, None, None, None], candidate, best)
      best_loss = tf.where(better, loss, best_loss)
    return best
  return _compiled(craft)


# Attacks on the whole evaluation set whose per-example results combine into
# the headline (SPSA runs on a subset, so it stays out).
ENSEMBLE = ("fgsm", "pgd", "pgd_strong", "mim", "eot_pgd", "apgd_ce", "apgd_dlr",
            "transfer")
# eval.json's headline entry: robust accuracy (all attacks).
HEADLINE = "robust_all"


def run_suite(target, x, y, config, source=None):
  """Runs every attack in `config.attacks` that applies to `target`.

  Args:
    target: the `Classifier` under evaluation.
    x: float32 images in [0, 1], [N, H, W, C].
    y: int64 labels [N].
    config: `config.EvalConfig`.
    source: optional differentiable `Classifier` for transfer attacks.

  Returns:
    {"results": {attack: entry}, "skipped": {attack: reason},
     "eps_sweep": [entry, ...], "stochastic": bool}. Every entry holds the
    accuracy mean/std over `config.noise_draws` passes and its settings.
  """
  tf.random.set_seed(config.seed)
  c, draws, bs = config, config.noise_draws, config.batch_size
  wanted = set(c.attacks)
  results, skipped, sweep = {}, {}, []
  correct_of = {}

  def record(name, correct, **info):
    correct_of[name] = correct
    results[name] = _entry(correct, **info)

  probe = x[:min(8, len(x))]
  stochastic = not np.array_equal(np.asarray(target.logits_fn(tf.constant(probe))),
                                  np.asarray(target.logits_fn(tf.constant(probe))))
  model_fn = target.logits_fn
  # EOT averages gradients over noise draws; a deterministic model gives the
  # same gradient every time, so one draw is the same attack at a tenth the cost.
  eot_samples = c.eot_samples if stochastic else 1
  apgd_eot_samples = c.apgd_eot_samples if stochastic else 1
  start = time.perf_counter()
  record("clean", _measure(target, x, y, draws, "clean", batch_size=bs),
         kind="clean", eps=0.0, crafted="none", seconds=time.perf_counter() - start)

  white_box = ("fgsm", "pgd", "pgd_strong", "mim", "eot_pgd", "apgd_ce",
               "apgd_dlr", "eps_sweep")
  if not target.differentiable:
    for name in wanted.intersection(white_box):
      skipped[name] = (f"{target.name} is not differentiable; white-box attacks "
                       "need a .keras or SavedModel twin (see transfer)")
    wanted -= set(white_box)

  def timed(name, label, craft, subset=None, craft_batch=None, **info):
    n = subset or len(y)
    xs, ys = x[:n], y[:n]
    t0 = time.perf_counter()
    crafted = None
    if info["crafted"] == "once":
      crafted = _craft_all(craft, xs, ys, craft_batch or bs, f"{label}: crafting")
      craft = None
    correct = _measure(target, xs, ys, draws, label, craft=craft,
                       crafted=crafted, batch_size=bs)
    record(name, correct, seconds=time.perf_counter() - t0, **info)

  eps, step = c.eps, c.step_size
  if "fgsm" in wanted:
    timed("fgsm", "FGSM", craft=_compiled(
        lambda a, b: attacks.fgsm(model_fn, a, b, eps=eps)),
          kind="white-box", eps=eps, steps=1, crafted="per draw")
  if "pgd" in wanted or "eps_sweep" in wanted:
    timed("pgd", f"PGD-{c.steps}", craft=_pgd_craft(model_fn, eps, step, c.steps,
                                                    c.restarts),
          kind="white-box", eps=eps, steps=c.steps, restarts=c.restarts,
          crafted="per draw")
  if "pgd_strong" in wanted:
    timed("pgd_strong", f"PGD-{c.strong_steps}",
          craft=_pgd_craft(model_fn, eps, step, c.strong_steps, c.restarts),
          kind="white-box", eps=eps, steps=c.strong_steps, restarts=c.restarts,
          crafted="per draw")
  if "mim" in wanted:
    timed("mim", f"MIM-{c.steps}", craft=_compiled(
        lambda a, b: attacks.mim(model_fn, a, b, eps=eps, step_size=step,
                                 steps=c.steps)),
          kind="white-box", eps=eps, steps=c.steps, crafted="per draw")
  if "eot_pgd" in wanted:
    timed("eot_pgd", f"EOT-PGD-{c.steps} x{eot_samples}", craft=_compiled(
        lambda a, b: attacks.eot_pgd(model_fn, a, b, eps=eps, step_size=step,
                                     steps=c.steps, eot_samples=eot_samples)),
          kind="white-box", eps=eps, steps=c.steps, eot_samples=eot_samples,
          crafted="once")
  for loss in ("ce", "dlr"):
    name = f"apgd_{loss}"
    if name in wanted:
      timed(name, f"APGD-{loss.upper()} (EOT x{apgd_eot_samples})",
            craft=lambda a, b, loss=loss: attacks.apgd(
                model_fn, a.numpy(), b.numpy(), eps=eps, loss=loss,
                steps=c.apgd_steps, eot_samples=apgd_eot_samples,
                restarts=c.apgd_restarts, num_classes=target.num_classes,
                batch_size=bs),
            craft_batch=len(y),  # apgd batches itself
            kind="white-box", eps=eps, steps=c.apgd_steps,
            restarts=c.apgd_restarts, eot_samples=apgd_eot_samples,
            crafted="once")
  if "transfer" in wanted:
    if source is None:
      skipped["transfer"] = "no --source_model given"
    elif not source.differentiable:
      skipped["transfer"] = f"source {source.name} is not differentiable"
    else:
      timed("transfer", f"transfer PGD-{c.steps} from {source.name}",
            craft=_pgd_craft(source.logits_fn, eps, step, c.steps, 1),
            kind="black-box (transfer)", eps=eps, steps=c.steps,
            crafted="once", source=source.name)
  if "spsa" in wanted:
    spsa_fn = model_fn if not target.differentiable else _compiled(model_fn)
    timed("spsa", f"SPSA-{c.spsa_steps} on {min(c.blackbox_limit, len(y))} images",
          craft=lambda a, b: attacks.spsa(spsa_fn, a, b, eps=eps, steps=c.spsa_steps,
                                          samples=c.spsa_samples),
          kind="black-box (query)", eps=eps, steps=c.spsa_steps, crafted="once",
          subset=min(c.blackbox_limit, len(y)), spsa_samples=c.spsa_samples)
    if "pgd" in correct_of:
      # Same images as SPSA, for the black-box >= white-box check.
      n = results["spsa"]["examples"]
      results["pgd"]["on_blackbox_subset"] = _summary(correct_of["pgd"][:, :n])

  entry = robust_all_entry({n: v for n, v in correct_of.items()
                            if n in c.attacks}, eps)
  if entry:
    results[HEADLINE] = entry
  if "eps_sweep" in wanted:
    points = sorted(set(c.eps_sweep) | {STRONG_EPS})
    for point in points:
      if math.isclose(point, eps) and "pgd" in correct_of:
        sweep.append({**results["pgd"], "eps": point})
        continue
      t0 = time.perf_counter()
      # The step scales with eps, so every point can reach its ball's edge.
      correct = _measure(target, x, y, draws, f"PGD-{c.steps} at eps "
                         f"{point * 255:g}/255", craft=_pgd_craft(
                             model_fn, point, point * step / eps, c.steps, 1),
                         batch_size=bs)
      sweep.append(_entry(correct, kind="white-box", eps=point, steps=c.steps,
                          restarts=1, crafted="per draw", step_size=point * step / eps,
                          seconds=time.perf_counter() - t0))
  if "pgd" not in c.attacks and "pgd" in results:
    del results["pgd"]  # only run to anchor the sweep
  return {"results": results, "skipped": skipped, "eps_sweep": sweep,
          "stochastic": bool(stochastic),
          "per_example": {n: correct_of[n] for n in ENSEMBLE + ("clean", "spsa")
                          if n in correct_of}}


def robust_all_entry(correct_of, eps):
  """eval.json's headline, robust accuracy (all attacks), or None.

  An image is robust in pass p only if it is classified correctly clean and
  under every whole-set attack in `correct_of` in pass p (`scoring.
  all_attacks`); the entry is the mean and std over passes.

  Args:
    correct_of: {attack: bool [passes, examples]}, "clean" among them.
    eps: the attacks' budget, for the entry.
  """
  names = [n for n in ("clean",) + ENSEMBLE if n in correct_of]
  if "clean" not in names or len(names) < 2:
    return None
  stacked = np.stack([correct_of[n] for n in names])
  return _entry(scoring.all_attacks(stacked), kind="all attacks, per pass",
                eps=eps, crafted="none", seconds=0.0, attacks=names)


def sanity_checks(suite):
  """Carlini et al. (2019) checks; each is PASS, FAIL or SKIPPED with a reason.

  Returns:
    A list of {"check", "status", "detail"} dicts.
  """
  r = suite["results"]
  sweep = suite["eps_sweep"]
  checks = []

  def add(check, needed, ok_fn, detail_fn):
    missing = [n for n in needed if n not in r and n != "sweep"]
    if missing or ("sweep" in needed and not sweep):
      checks.append({"check": check, "status": "SKIPPED",
                     "detail": f"not run: {', '.join(missing) or 'eps_sweep'}"})
      return
    ok = ok_fn()
    checks.append({"check": check, "status": "PASS" if ok else "FAIL",
                   "detail": detail_fn()})

  def pct(entry):
    return f"{100 * entry['mean']:.2f}% ± {100 * entry['std']:.2f}"

  def at(eps):
    return next((p for p in sweep if math.isclose(p["eps"], eps)), None)

  zero = at(0.0)
  add("eps = 0 reproduces clean accuracy", ["clean", "sweep"],
      lambda: zero is not None and abs(zero["mean"] - r["clean"]["mean"])
      <= scoring.tolerance(zero, r["clean"]),
      lambda: "eps 0 not in the sweep" if zero is None else
      f"eps 0: {pct(zero)} vs clean {pct(r['clean'])}")
  add("accuracy does not rise as eps grows", ["sweep"],
      lambda: all(b["mean"] <= a["mean"] + scoring.tolerance(a, b)
                  for a, b in zip(sweep, sweep[1:])),
      lambda: ", ".join(f"{p['eps'] * 255:g}/255: {100 * p['mean']:.1f}%"
                        for p in sweep))
  strong = at(STRONG_EPS)
  add("PGD at eps 64/255 brings accuracy to <= 5%", ["sweep"],
      lambda: strong is not None and strong["mean"] <= 0.05,
      lambda: f"{pct(strong)}" if strong else "64/255 not run")
  add("more PGD steps never help the model (PGD-strong <= PGD)",
      ["pgd", "pgd_strong"],
      lambda: r["pgd_strong"]["mean"] <= r["pgd"]["mean"] + scoring.tolerance(
          r["pgd"], r["pgd_strong"]),
      lambda: f"PGD-{r['pgd_strong']['steps']} {pct(r['pgd_strong'])} vs "
      f"PGD-{r['pgd']['steps']} {pct(r['pgd'])}")
  add("iterative beats single-step (PGD <= FGSM)", ["pgd", "fgsm"],
      lambda: r["pgd"]["mean"] <= r["fgsm"]["mean"] + scoring.tolerance(r["pgd"], r["fgsm"]),
      lambda: f"PGD {pct(r['pgd'])} vs FGSM {pct(r['fgsm'])}")
  add("black-box transfer is weaker than white-box (transfer >= PGD)",
      ["transfer", "pgd"],
      lambda: r["transfer"]["mean"] >= r["pgd"]["mean"] - scoring.tolerance(
          r["transfer"], r["pgd"]),
      lambda: f"transfer {pct(r['transfer'])} vs PGD {pct(r['pgd'])}")
  add("black-box queries are weaker than white-box (SPSA >= PGD, same images)",
      ["spsa", "pgd"],
      lambda: r["spsa"]["mean"] >= r["pgd"]["on_blackbox_subset"]["mean"]
      - scoring.tolerance(r["spsa"], r["pgd"]["on_blackbox_subset"]),
      lambda: f"SPSA {pct(r['spsa'])} vs PGD on the same "
      f"{r['spsa']['examples']} images {pct(r['pgd']['on_blackbox_subset'])}")
  add("EOT does not help the model (EOT-PGD <= PGD)", ["eot_pgd", "pgd"],
      lambda: r["eot_pgd"]["mean"] <= r["pgd"]["mean"] + scoring.tolerance(
          r["eot_pgd"], r["pgd"]),
      lambda: f"EOT-PGD {pct(r['eot_pgd'])} vs PGD {pct(r['pgd'])}")
  add("APGD with EOT is at least as strong as PGD (APGD-CE <= PGD)",
      ["apgd_ce", "pgd"],
      lambda: r["apgd_ce"]["mean"] <= r["pgd"]["mean"] + scoring.tolerance(
          r["apgd_ce"], r["pgd"]),
      lambda: f"APGD-CE {pct(r['apgd_ce'])} vs PGD {pct(r['pgd'])}")
  return checks


def accuracy_over_draws(model, dataset, draws, attack=None, label=""):
  """Accuracy of a Keras `model` over `draws` fresh-noise passes of `dataset`.

  Args:
    model: maps [0, 1] images to logits; called with `training=False`.
    dataset: finite `tf.data.Dataset` of (images, labels).
    draws: number of passes; a noisy model differs between them.
    attack: None for clean accuracy, or a `config.AttackConfig` for L-inf PGD
      against the true labels, made fresh in every pass.
    label: name shown in the progress bar.

  Returns:
    {"mean", "std", "per_draw", "examples", "draws"}, accuracies in [0, 1].
  """
  x = np.concatenate([b[0].numpy() for b in dataset])
  y = np.concatenate([b[1].numpy() for b in dataset])
  target = from_keras(model)
  craft = None if attack is None else _pgd_craft(
      target.logits_fn, attack.eps, attack.step_size, attack.steps, 1)
  return _summary(_measure(target, x, y, draws, label or "clean", craft=craft))


_ORDER = ("clean", "fgsm", "pgd", "pgd_strong", "mim", "eot_pgd", "apgd_ce",
          "apgd_dlr", "transfer", "spsa", HEADLINE)
_NAMES = {"clean": "Clean", "fgsm": "FGSM", "pgd": "PGD", "pgd_strong": "PGD",
          "mim": "MIM", "eot_pgd": "EOT-PGD", "apgd_ce": "APGD-CE (EOT)",
          "apgd_dlr": "APGD-DLR (EOT)", "transfer": "Transfer PGD",
          "spsa": "SPSA", HEADLINE: "**Robust accuracy (all attacks)**"}


def report_markdown(report):
  """eval.json as tables laid out like the paper's: one row per attack."""
  suite = report["suite"]
  r = suite["results"]
  lines = [f"# Robustness of `{report['model']['path']}`", "",
           f"Data: {report['data']['source']}, {report['data']['eval_examples']} "
           f"held-out images. " + (
               f"Model is stochastic; every accuracy is mean ± std over "
               f"{report['config']['noise_draws']} independent noisy passes."
               if suite["stochastic"] else
               f"Model is deterministic; the ± is the spread over "
               f"{report['config']['noise_draws']} passes, from random starts "
               "alone."), "",
           "| attack | kind | eps | steps | restarts | EOT | crafted | images | accuracy (%) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for name in _ORDER:
    if name not in r:
      continue
    e = r[name]
    label = _NAMES[name] + (f"-{e['steps']}" if name in ("pgd", "pgd_strong", "mim",
                                                           "eot_pgd") else "")
    dash = lambda v: "–" if v in (None, 0) else str(v)  # noqa: E731
    lines.append(
        f"| {label} | {e['kind']} | {e['eps_255']:g}/255 | {dash(e['steps'])} | "
        f"{dash(e['restarts'])} | {dash(e['eot_samples'])} | {e['crafted']} | "
        f"{e['examples']} | {100 * e['mean']:.2f} ± {100 * e['std']:.2f} |")
  for name, reason in sorted(suite["skipped"].items()):
    lines.append(f"| {_NAMES.get(name, name)} | skipped | | | | | | | {reason} |")
  headline = r.get(HEADLINE)
  if headline:
    lines += ["", f"Robust accuracy (all attacks) counts an image in a pass "
              f"only if it survives every one of {', '.join(headline['attacks'])} "
              "in that pass (AutoAttack's rule). On a noisy model each attack's "
              "pass is a fresh noise draw, so the figure depends on the set: "
              "compare models under the same attacks."]
  if suite["eps_sweep"]:
    lines += ["", "## Accuracy against eps (PGD)", "",
              "| eps | accuracy (%) |", "|---|---|"]
    lines += [f"| {p['eps'] * 255:g}/255 | {100 * p['mean']:.2f} ± {100 * p['std']:.2f} |"
              for p in suite["eps_sweep"]]
    lines += ["", "![accuracy against eps](accuracy_vs_eps.png)"]
  lines += ["", "## Sanity checks (Carlini et al. 2019)", "",
            "| check | result | detail |", "|---|---|---|"]
  lines += [f"| {c['check']} | **{c['status']}** | {c['detail']} |"
            for c in report["sanity_checks"]]
  p = report["provenance"]
  lines += ["", "## Reproduce", "", f"    {p['command']}", "",
            f"git commit {p['git_commit']}, {p['date']}; model sha256 "
            f"{report['model']['sha256']}."]
  for again in report.get("rescored", []):
    lines += ["", "Robust accuracy (all attacks) and sanity checks re-derived from "
              "per_example.npz "
              f"(no new attacks) by `{again['command']}`, git commit "
              f"{again['git_commit']}, {again['date']}."]
  return "\n".join(lines) + "\n"
