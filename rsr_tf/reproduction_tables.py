"""The reproduction report's markdown tables: one function per table.

Each takes the runs of rsr_tf.reproduction.load_runs and returns the table
as text, numbers in %; what the tables mean is said in the document around
them (rsr_tf.reproduction_md).
"""

import statistics

from rsr_tf import scoring
from rsr_tf.reproduction import ATTACKS
from rsr_tf.reproduction import COMPARED
from rsr_tf.reproduction import HEADER
from rsr_tf.reproduction import HEADLINE
from rsr_tf.reproduction import VARIANTS
from rsr_tf.reproduction import accuracy
from rsr_tf.reproduction import common_set
from rsr_tf.reproduction import compare
from rsr_tf.reproduction import correctness
from rsr_tf.reproduction import sparsity

# The published numbers beside which ours are set (RSR-method.md), CIFAR-10.
PAPER = {
    "at": "83.84 / 39.14 / 46.55 (ResNet-20, PNI paper)",
    "pni_at": "85.17 / 48.40 / 56.51 (ResNet-20, PNI paper)",
    "rsr_85": "+0.68 clean, +8.72 PGD over its own PGD-AT (ResNet-18, RSR paper)",
}


def _pct(entry):
  if entry is None:
    return "—"
  return f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"


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


def results_table(runs, attacks):
  """Every run of every variant: sparsity, each attack, the headline, the paper."""
  header = (["variant", "seeds", "sparsity"] + [h for _, h in ATTACKS]
            + [f"**{HEADER[HEADLINE]}**", "paper: clean / PGD / FGSM"])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, what in VARIANTS:
    seeds = runs[name]
    if not seeds:
      lines.append(f"| `{name}`: {what} | not run yet |" + " |" * (len(header) - 2))
      continue
    for run in seeds:
      measured = sparsity(run)
      cells = [f"`{run['name']}`: {what}", str(len(seeds)),
               "—" if measured is None else f"{100 * measured:.1f}%"]
      cells += [_pct(accuracy(run, a, attacks)) for a, _ in ATTACKS]
      cells.append(f"**{_pct(accuracy(run, HEADLINE, attacks))}**")
      cells.append(PAPER.get(name, "—") if run["name"] == name else "")
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def noise_table(runs, attacks):
  """Each run's weakest single attack beside the headline, and how unstable it is.

  The headline can fall below every single attack only through images that
  different attacks fool in different passes; the last column says how many
  images change outcome between passes of one attack.
  """
  lines = ["| run | weakest single attack | **robust accuracy (all attacks)** | "
           "below the weakest attack (points) | images whose outcome changes "
           "between passes (mean over the attacks) |", "|---|---|---|---|---|"]
  for name, _ in VARIANTS:
    for run in runs[name]:
      matrices = {a: correctness(run, a, attacks) for a in attacks}
      headline = correctness(run, HEADLINE, attacks)
      if headline is None or any(m is None for m in matrices.values()) or (
          headline.shape[0] < 2):
        continue
      weakest = min(attacks, key=lambda a: matrices[a].mean())
      lowest, robust = matrices[weakest].mean(), headline.mean()
      unstable = sum(scoring.unstable_share(m) for m in matrices.values())
      lines.append(
          f"| `{run['name']}` | {HEADER[weakest]}: {100 * lowest:.1f} | "
          f"**{100 * robust:.1f}** | {100 * (lowest - robust):.1f} | "
          f"{100 * unstable / len(matrices):.1f}% |")
  return "\n".join(lines) if len(lines) > 2 else ""


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
      wall = f"{m['wall_seconds'] / 60:.0f} min"
      earlier = m.get("earlier_processes")
      if earlier:
        # Phase 1's speeds of every process, from history.csv's rows.
        restored = m["epochs"]["train"] if config.get("init_from") else 0
        speeds = m["history"]["images_per_second"][restored:m["epochs"]["train"]]
        wall = (f"{(m['wall_seconds'] + earlier['training_seconds']) / 60:.0f}"
                f" min (resumed: the training loops of {earlier['epochs']} "
                "epochs from earlier processes added, their validation not)")
      cells = [f"`{run['name']}`", epochs, trained, wall,
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


def sanity_table(runs):
  """The sanity checks each evaluation passed, and the details of the others."""
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
  """Each collected JSON file's command, commit and date, rescorings included."""
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
