"""Robustness evaluation: the public `evaluate`, the clean/PGD check of training, eval.md."""

import rsr_tf  # noqa: F401
import numpy as np

from rsr_tf import classifiers
from rsr_tf import registry
from rsr_tf import sanity
from rsr_tf import suite as suite_lib


HEADLINE = registry.HEADLINE


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
  from rsr_tf import config as config_lib  # noqa: E402
  x = np.concatenate([b[0].numpy() for b in dataset])
  y = np.concatenate([b[1].numpy() for b in dataset])
  target = classifiers.from_keras(model)
  craft = None
  if attack is not None:
    ctx = registry.Context(target.logits_fn, None, config_lib.EvalConfig(
        eps=attack.eps, step_size=attack.step_size), False)
    craft = registry.pgd_craft(ctx, attack.steps, restarts=1)
  return suite_lib.summary(suite_lib.measure(target, x, y, draws,
                                             label or "clean", craft=craft))


def evaluate(model, data, attacks=None, *, preset="cpu", source=None,
             resume_dir=None, **settings):
  """Robustness of any image classifier, the field's way: `rsr_tf.evaluate`.

  Every attack of the preset (or `attacks`) runs against the model as it is
  deployed, noise on, over `noise_draws` passes; the headline, robust
  accuracy (all attacks), counts an image in a pass only if it survives
  every attack in that pass. The model may have any input shape and class
  count.

  Args:
    model: a tf_keras model from [0, 1] images to logits, or the path of a
      .keras file, SavedModel directory or .tflite file.
    data: (images, labels): images in [0, 1] (float) or uint8 [N, H, W, C],
      int labels [N].
    attacks: names from `rsr_tf.registry.NAMES`; None: the preset's.
    preset: "cpu", "aa_rand" or "aa_standard" (`registry.PRESETS`).
    source: a model or path to craft transfer attacks on.
    resume_dir: a folder that keeps every finished attack, so that an
      evaluation broken off carries on there with the same model, data and
      settings (`rsr_tf.eval_resume`). Delete it once the result is saved.
    **settings: any other `config.EvalConfig` field (eps, noise_draws, ...).

  Returns:
    {"results": {attack: entry}, "skipped", "eps_sweep", "stochastic",
     "sanity_checks", "per_example": {attack: bool [passes, examples]},
     "config", "resumed"}; each entry holds "mean" and "std" over passes.

  Raises:
    ValueError: a bad setting, a model that does not map images to logits,
      images of another shape than the model takes, or a `resume_dir` that
      holds an unfinished evaluation of something else
      (`eval_resume.ResumeError`).
  """
  import dataclasses  # noqa: E402
  from rsr_tf import config as config_lib  # noqa: E402
  settings.pop("preset", None)
  if attacks is not None:
    settings["attacks"] = tuple(attacks)
  config = config_lib.EvalConfig.from_preset(preset, **settings).validate()
  target, origin = (None if m is None else _classifier(m) for m in (model, source))
  images, labels = data
  images = np.asarray(images)
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255.0
  images = images.astype(np.float32)
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  if target.input_shape and tuple(images.shape[1:]) != tuple(target.input_shape):
    raise ValueError(f"evaluate: images are {list(images.shape[1:])}, the "
                     f"model takes {list(target.input_shape)}")
  if images.min() < 0 or images.max() > 1:
    raise ValueError("evaluate: images must be in [0, 1] (or uint8)")
  progress = None
  if resume_dir:
    from rsr_tf import eval_resume  # noqa: E402
    progress = eval_resume.Progress(resume_dir, eval_resume.identity(
        model, source, images, labels, dataclasses.asdict(config)))
  result = suite_lib.run_suite(target, images, labels, config, source=origin,
                               progress=progress)
  result["sanity_checks"] = sanity.sanity_checks(result)
  result["config"] = dataclasses.asdict(config)
  return result


def _classifier(model):
  if isinstance(model, classifiers.Classifier):
    return model
  if isinstance(model, str):
    return classifiers.load_classifier(model)
  return classifiers.from_keras(model)


def title(name, e):
  """An entry's label in tables, from the registry and the entry's budget."""
  attack = registry.ATTACKS.get(name)
  if attack is None:
    return name
  budget = {k: e.get(k) for k in ("steps", "restarts", "eot_samples",
                                  "queries", "targets", "spsa_samples")}
  try:
    return attack.title.format(**budget)
  except (KeyError, IndexError):
    return attack.title


def eps_text(eps, norm="linf"):
  return f"{eps * 255:g}/255" if norm == "linf" else f"{eps:g} (L2)"


def report_markdown(report):
  """eval.json as tables laid out like the paper's: one row per attack."""
  suite = report["suite"]
  r = suite["results"]
  norm = report["config"].get("norm", "linf")
  sequential = report["config"].get("sequential", False)
  lines = [f"# Robustness of `{report['model']['path']}`", "",
           f"Data: {report['data']['source']}, {report['data']['eval_examples']} "
           f"held-out images; preset `{report['config'].get('preset', 'cpu')}`. " + (
               f"Model is stochastic; every accuracy is mean ± std over "
               f"{report['config']['noise_draws']} independent noisy passes."
               if suite["stochastic"] else
               f"Model is deterministic; the ± is the spread over "
               f"{report['config']['noise_draws']} passes, from random starts "
               "alone.") + (
               " Attacks ran in turn, each on the images still robust after "
               "the ones before (AutoAttack's order); each row is the robust "
               "accuracy after it." if sequential else ""), "",
           "| attack | kind | eps | crafted | images | accuracy (%) |",
           "|---|---|---|---|---|---|"]
  names = [n for n in registry.ATTACKS if n in r] + (
      [HEADLINE] if HEADLINE in r else [])
  for name in names:
    e = r[name]
    label = ("**Robust accuracy (all attacks)**" if name == HEADLINE
             else title(name, e))
    images = str(e["examples"]) + (f" ({e['attacked']} attacked)"
                                   if "attacked" in e else "")
    lines.append(
        f"| {label} | {e['kind']} | {eps_text(e['eps'], norm)} | {e['crafted']} | "
        f"{images} | {100 * e['mean']:.2f} ± {100 * e['std']:.2f} |")
  for name, reason in sorted(suite["skipped"].items()):
    lines.append(f"| {name} | skipped | | | | {reason} |")
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
    lines += [f"| {eps_text(p['eps'], norm)} | {100 * p['mean']:.2f} ± "
              f"{100 * p['std']:.2f} |" for p in suite["eps_sweep"]]
    lines += ["", "![accuracy against eps](accuracy_vs_eps.png)"]
  lines += ["", "## Sanity checks (Carlini et al. 2019)", "",
            "| check | result | detail |", "|---|---|---|"]
  lines += [f"| {c['check']} | **{c['status']}** | {c['detail']} |"
            for c in report["sanity_checks"]]
  p = report["provenance"]
  lines += ["", "## Reproduce", "", f"    {p['command']}", "",
            f"git commit {p['git_commit']}, {p['date']}; model sha256 "
            f"{report['model']['sha256']}."]
  if suite.get("resumed"):
    lines += ["", "The evaluation was broken off and carried on; these ran "
              f"before the break: {', '.join(suite['resumed'])}."]
  for again in report.get("rescored", []):
    lines += ["", "Robust accuracy (all attacks) and sanity checks re-derived from "
              "per_example.npz "
              f"(no new attacks) by `{again['command']}`, git commit "
              f"{again['git_commit']}, {again['date']}."]
  return "\n".join(lines) + "\n"
