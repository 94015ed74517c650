"""The reproduction's runs, read from the collected files, and the verdicts on them.

scripts/reproduce.py collects each run into results/<budget>/<variant>/
(metrics.json, eval.json, per_example.npz); this module reads them back and
scores them: accuracies, the headline robust accuracy (all attacks) and
whether one variant beats another beyond the noise. Numpy only, like
rsr_tf.scoring, so scripts/report.py never imports TensorFlow.
"""

import json
import math
import os
import statistics

import numpy as np

from rsr_tf import scoring

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
# A variant's further seeds are collected beside it as <variant>_seed1, ...
SEED_SUFFIX = "_seed"
HEADLINE = scoring.HEADLINE
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


class ResultsError(Exception):
  """A collected file exists but cannot be read; the message names it."""


def load_json(path):
  """The JSON object in `path`, or None if there is no such file.

  Raises:
    ResultsError: the file is there but not readable JSON.
  """
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ResultsError(f"{path} is not readable JSON: {e}") from e


def _load_per_example(path):
  if not os.path.exists(path):
    return None
  try:
    with np.load(path) as saved:
      return {n: saved[n] for n in saved.files}
  except (OSError, ValueError) as e:
    raise ResultsError(f"{path} is not a readable .npz file: {e}") from e


def load_runs(results_dir, budget):
  """{variant: [run of each seed]}, each run {"metrics", "eval", "per_example",
  "name"}; a variant never run is []. Seed 0 is the variant's own folder.

  Raises:
    ResultsError: a collected file is not readable.
  """
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
             "metrics": load_json(os.path.join(folder, "metrics.json")),
             "eval": load_json(os.path.join(folder, "eval.json")),
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



def sparsity(run):
  """Measured overall sparsity of a run's model, or None if not collected."""
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


# compare()'s verdicts; the report groups attacks by them.
BETTER, WORSE, TIE = "yes", "no, it is worse", "no difference beyond the noise"


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
    verdict = BETTER
  elif diff < -margin:
    verdict = WORSE
  else:
    verdict = TIE
  return {"a": means[0], "b": means[1], "diff": diff, "margin": margin,
          "paired": paired, "seeds": (len(seeds_a), len(seeds_b)),
          "seed_dof": dof, "verdict": verdict}

