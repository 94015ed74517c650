"""The lasso sweep's table and plot, from the collected metrics.json files.

  python scripts/reproduce.py --budget=lasso_sweep --steps=train,collect --image_folder=DIR
  python scripts/sweep_report.py        # results/LASSO_SWEEP.md, results/lasso_sweep.png

Each RSR run (results/lasso_sweep/rsr_l1_<lambda>/) differs from the others
only in --lambda_l1; at_prune_85 is PGD-AT + the same prune without lasso and
noise. What the lasso is for is read on the held-out validation images: clean
and PGD-7 accuracy after phase 1, right after the 85% one-shot prune (before
any fine-tuning), and after fine-tuning. Selection never looks at test images.
"""

import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS
REFERENCE = "at_prune_85"
PREFIX = "rsr_l1_"
# noise_kept_l1_<lambda> restores rsr_l1_<lambda>'s phase 1 and fine-tunes with
# --noise_std=kept: the noise scale after pruning (issue 15, point 4).
NOISE_KEPT_PREFIX = "noise_kept_l1_"
# (key, header): the three moments the sweep measures, on validation images.
STAGES = (("trained", "after phase 1"), ("pruned", "after the prune"),
          ("finetuned", "after fine-tuning"))


def define_flags():
  flags.DEFINE_string("sweep", "lasso_sweep", "Folder under --results_dir.")
  flags.DEFINE_string("results_dir", "results", "Where reproduce.py collected "
                      "the runs; LASSO_SWEEP.md and lasso_sweep.png go here.")


def load(folder):
  """({run name: metrics.json}, {twin name: metrics.json}).

  The first holds the RSR runs by increasing lambda, then the reference; the
  second the --noise_std=kept twins.
  """
  runs = {}
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name, "metrics.json")
    if os.path.exists(path):
      try:
        with open(path) as f:
          runs[name] = json.load(f)
      except (OSError, ValueError) as e:
        _cli.fail(f"{path} is not readable JSON: {e}")
  order = sorted((n for n in runs if n.startswith(PREFIX)),
                 key=lambda n: runs[n]["config"]["loss"]["lambda_l1"])
  twins = {n: runs[n] for n in sorted(runs) if n.startswith(NOISE_KEPT_PREFIX)}
  return ({n: runs[n] for n in order + [n for n in runs if n == REFERENCE]},
          twins)


def stages(metrics):
  """{stage: {"clean", "pgd"}} on the validation images, and their count."""
  history = metrics["history"]
  trained = metrics["epochs"]["train"] - 1  # last phase-1 epoch, 0-based
  pruned = (metrics.get("validation") or {}).get("after_prune") or {}
  out = {"trained": {"clean": history["val_clean_accuracy"][trained],
                     "pgd": history["val_pgd_accuracy"][trained]},
         "pruned": {"clean": pruned.get("clean_accuracy"),
                    "pgd": pruned.get("pgd_accuracy")},
         "finetuned": {"clean": history["val_clean_accuracy"][-1],
                       "pgd": history["val_pgd_accuracy"][-1]}}
  return out, metrics["validation"]["examples"]


def _se(p, n):
  return math.sqrt(p * (1 - p) / n)


def _cell(p, n):
  return "—" if p is None else f"{100 * p:.1f} ± {100 * _se(p, n):.1f}"


def stem_and_deepest(layers):
  """One-shot sparsity of the stem conv and of the deepest conv, or (None, None).

  metrics.json stores layers sorted by name, not in model order, so the
  deepest is the conv whose name has the largest numbers (s3b3_conv2 after
  s3b3_conv1 and s2b1_conv1), and the stem is the one named so.
  """
  convs = {k: v for k, v in layers.items() if "conv" in k}
  if not convs:
    return None, None
  stem = next((k for k in convs if "stem" in k), None)
  rest = [k for k in convs if k != stem] or list(convs)
  deepest = max(rest, key=lambda k: [int(n) for n in re.findall(r"\d+", k)])
  return convs[stem or min(rest)], convs[deepest]


def table(runs):
  header = ["run", "lambda_l1", "L1 norm, last phase-1 epoch",
            "one-shot sparsity: stem / deepest conv"]
  for _, what in STAGES:
    header += [f"clean {what}", f"PGD-7 {what}"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, m in runs.items():
    measured, n = stages(m)
    stem, deepest = stem_and_deepest(m.get("oneshot_layer_sparsity") or {})
    cells = [f"`{name}`", f"{m['config']['loss']['lambda_l1']:g}",
             f"{m['history']['l1_norm'][m['epochs']['train'] - 1]:,.0f}",
             f"{stem:.2f} / {deepest:.2f}" if stem is not None else "—"]
    for key, _ in STAGES:
      cells += [_cell(measured[key]["clean"], n), _cell(measured[key]["pgd"], n)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _compare(a, b, n_a, n_b):
  """(two unpaired standard errors, verdict) for accuracy a against b."""
  margin = 2 * math.hypot(_se(a, n_a), _se(b, n_b))
  verdict = ("better" if a - b > margin else "worse" if b - a > margin
             else "no difference beyond the noise")
  return margin, verdict


def verdicts(runs):
  """Each lambda against the reference after fine-tuning, and the selection."""
  if REFERENCE not in runs:
    return "The reference (`at_prune_85`) has not run yet."
  ref, n_ref = stages(runs[REFERENCE])
  lines, ranked = [], []
  for name, m in runs.items():
    if name == REFERENCE:
      continue
    mine, n = stages(m)
    for key, what in (("pruned", "after the prune"), ("finetuned", "after fine-tuning")):
      a, b = mine[key]["pgd"], ref[key]["pgd"]
      if a is None or b is None:
        continue
      margin, verdict = _compare(a, b, n, n_ref)
      lines.append(f"- `{name}` {what}: PGD-7 {100 * (a - b):+.1f} points against "
                   f"`{REFERENCE}` (±{100 * margin:.1f}, two standard errors, "
                   f"unpaired): **{verdict}**.")
    if mine["finetuned"]["pgd"] is not None:
      ranked.append((mine["finetuned"]["pgd"], name, n,
                     m["config"]["loss"]["lambda_l1"]))
  ranked.sort(reverse=True)
  if ranked:
    score, name, n, lambda_l1 = ranked[0]
    lines.append(f"- Selected on validation PGD-7 after fine-tuning: "
                 f"**lambda_l1 = {lambda_l1:g}** (`{name}`, {100 * score:.1f}%).")
  if len(ranked) > 1:
    # A selection is only as firm as its lead over the runner-up.
    second, second_name, second_n, _ = ranked[1]
    lines.append(f"- Its lead over the runner-up `{second_name}`: "
                 f"{_versus(score, second, n, second_n)}.")
  return "\n".join(lines)


def _versus(a, b, n_a, n_b):
  """'+x.x (±m): verdict' for two accuracies on validation images, unpaired."""
  margin, verdict = _compare(a, b, n_a, n_b)
  return f"{100 * (a - b):+.1f} (±{100 * margin:.1f}): {verdict}"


def noise_scale(runs, twins):
  """The noise scale after pruning: each kept twin against its all source."""
  if not twins:
    return "Not measured yet (`noise_kept_l1_<lambda>` runs)."
  lines = ["| run | against | stage | clean, kept | clean, all | kept - all | "
           "PGD-7, kept | PGD-7, all | kept - all |", "|" + "---|" * 9]
  for name, twin in twins.items():
    source = PREFIX + name[len(NOISE_KEPT_PREFIX):]
    if source not in runs:
      lines.append(f"| `{name}` | `{source}` has not run | | | | | | | |")
      continue
    kept, n_kept = stages(twin)
    full, n_full = stages(runs[source])
    for key, what in STAGES[1:]:
      cells = [f"`{name}`", f"`{source}`", what]
      for metric in ("clean", "pgd"):
        a, b = kept[key][metric], full[key][metric]
        cells += ["—", "—", "—"] if a is None or b is None else [
            _cell(a, n_kept), _cell(b, n_full), _versus(a, b, n_kept, n_full)]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(runs, path):
  from rsr_tf import plotting  # noqa: E402  (matplotlib only when needed)
  rsr = {n: m for n, m in runs.items() if n != REFERENCE}
  lambdas = [m["config"]["loss"]["lambda_l1"] for m in rsr.values()]
  series = {f"{what} ({metric})": [stages(m)[0][key][metric] for m in rsr.values()]
            for key, what in STAGES[1:] for metric in ("clean", "pgd")}
  reference = ({f"{what} ({metric})": stages(runs[REFERENCE])[0][key][metric]
                for key, what in STAGES[1:] for metric in ("clean", "pgd")}
               if REFERENCE in runs else {})
  plotting.sweep(lambdas, series, reference, path, xlabel="lambda_l1",
                 title="Lasso sweep: held-out accuracy of RSR at 85% sparsity")


def document(runs, twins, sweep):
  any_run = next(iter(runs.values()))
  data = any_run["data"]
  provenance = sorted({(m["provenance"]["git_commit"][:12],
                        m["provenance"]["date"][:10])
                       for m in [*runs.values(), *twins.values()]})
  return "\n".join([
      "# The lasso sweep",
      "",
      f"Generated by `python scripts/sweep_report.py --sweep={sweep}` from "
      f"`{sweep}/*/metrics.json`; do not edit by hand.",
      "",
      f"Budget: the `cpu_long` schedule shortened to {any_run['epochs']['train']} "
      f"+ {any_run['epochs']['finetune']} epochs (85% one-shot prune after epoch "
      f"{any_run['epochs']['train']}, one cosine curve over both phases) on "
      f"{data['train_examples']:,} training images of `{data['source']}`, seed "
      f"{any_run['config']['seed']}. Accuracies in % on the "
      f"{any_run['validation']['examples']:,} validation images held out of the "
      "training images (one noise pass each; ± is the binomial standard error "
      "over those images, and the noise-draw and seed spreads are not in it).",
      "",
      table(runs),
      "",
      verdicts(runs),
      "",
      "![lasso sweep](lasso_sweep.png)",
      "",
      "## The noise scale after pruning",
      "",
      "PNI-W draws its noise with std(w) of the whole kernel, as the formula "
      "reads (`--noise_std=all`); after an 85% prune the zeros shrink it. "
      "`--noise_std=kept` takes it over the kept weights only. Each twin "
      "restores its source's phase 1 (`--init_from`) and differs from it only "
      "in that setting; margins are two unpaired standard errors on the "
      "validation images.",
      "",
      noise_scale(runs, twins),
      "",
      "Runs: " + "; ".join(f"commit `{c}`, {d}" for c, d in provenance) + ". "
      "Reproduce: `python scripts/reproduce.py --budget=lasso_sweep "
      "--steps=train,collect --image_folder=DIR`, then this script.",
      ""])


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  folder = os.path.join(FLAGS.results_dir, FLAGS.sweep)
  runs, twins = load(folder) if os.path.isdir(folder) else ({}, {})
  if not runs:
    _cli.fail(f"no metrics.json under {folder}; run scripts/reproduce.py "
              f"--budget={FLAGS.sweep} first")
  from rsr_tf import outputs  # noqa: E402
  plot(runs, os.path.join(FLAGS.results_dir, "lasso_sweep.png"))
  path = os.path.join(FLAGS.results_dir, "LASSO_SWEEP.md")
  outputs.write_text_atomic(path, document(runs, twins, FLAGS.sweep))
  print(f"wrote {path}, lasso_sweep.png")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
