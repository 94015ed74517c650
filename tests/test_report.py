"""scripts/report.py: the document's verdicts and tables come from the JSON files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "report.py")
LABELS = np.arange(1000) % 10


def _first_right(k, passes=5, n=1000):
  """Correct on the first k of n examples in every pass."""
  return np.arange(n)[None, :].repeat(passes, 0) < k


def _write_run(results, run, sparsity, correct, budget="cpu", labels=LABELS,
               history=None, entries=None):
  """A run's three files; `correct` holds its [passes, examples] matrices."""
  folder = results / budget / run
  folder.mkdir(parents=True)
  provenance = {"command": f"python scripts/train.py --flagfile={run}",
                "git_commit": "abc123", "date": "2026-11-25T00:00:00+00:00"}
  (folder / "metrics.json").write_text(json.dumps({
      "sparsity": {"overall": sparsity}, "provenance": provenance,
      "epochs": {"train": 5, "finetune": 1}, "wall_seconds": 3600.0,
      "training_images_per_second": {"train": [60.0, 90.0, 95.0]},
      "config": {"loss": {"adversarial": True},
                 "attack": {"steps": 7, "step_size": 2 / 255}},
      "clean_accuracy": {"mean": 0.6, "std": 0.003, "examples": 10000,
                         "draws": 3},
      "history": history or {},
      "validation": {"examples": 1000, "source": "held out of the training "
                     "images", "catastrophic_overfitting": None},
      "data": {"source": "image_folder:/data", "train_examples": 49000,
               "eval_examples": 1000}}))
  results_ = {name: {"mean": float(m.mean()), "std": float(m.mean(1).std()),
                     "examples": m.shape[1], "per_draw": m.mean(1).tolist()}
              for name, m in correct.items()}
  results_.update(entries or {})
  sweep = [{"mean": 0.5, "std": 0.0, "eps": e / 255, "steps": 7}
           for e in (0, 8, 64)]
  (folder / "eval.json").write_text(json.dumps({
      "suite": {"results": results_, "eps_sweep": sweep},
      "sanity_checks": [{"check": "eps = 0 reproduces clean accuracy",
                         "status": "PASS"},
                        {"check": "more steps never help", "status": "FAIL",
                         "detail": "PGD-20 above PGD-7"}],
      "config": {"noise_draws": 5}, "data": {"eval_examples": 1000},
      "provenance": dict(provenance, command="python scripts/evaluate.py")}))
  if labels is not None:
    np.savez(folder / "per_example.npz", labels=labels, **correct)


def _report(results, budget="cpu"):
  result = subprocess.run([sys.executable, SCRIPT, f"--results_dir={results}",
                           f"--budget={budget}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert result.returncode == 0, result.stderr
  name = "REPRODUCTION.md" if budget == "cpu" else f"REPRODUCTION_{budget}.md"
  return (results / name).read_text()


def _row(text, table_heading, attack):
  section = text.split(f"### {table_heading}")[1].split("###")[0]
  return next(line for line in section.splitlines() if line.startswith(f"| {attack}"))


def test_the_headline_takes_every_attack_in_the_same_pass(tmp_path):
  # RSR: 450 images survive PGD, 450 survive APGD, but only 300 both (it
  # dodges each attack on different images). AT: 350 survive both.
  pgd = _first_right(450)
  apgd = np.arange(1000)[None].repeat(5, 0) >= 150
  apgd &= np.arange(1000)[None] < 600
  _write_run(tmp_path, "at", 0.0, {"clean": _first_right(600),
                                   "pgd": _first_right(350),
                                   "apgd_ce": _first_right(350)})
  _write_run(tmp_path, "rsr_85", 0.85, {"clean": _first_right(600), "pgd": pgd,
                                        "apgd_ce": apgd})
  text = _report(tmp_path)
  headline = _row(text, "RSR 85% against dense PGD-AT", "**robust accuracy")
  assert "| 30.0 | 35.0 | -5.0 |" in headline and "no, it is worse" in headline
  assert "| yes |" in _row(text, "RSR 85% against dense PGD-AT", "PGD-7")
  assert ("- **RSR 85% against dense PGD-AT:** 30.0% against 35.0% robust "
          "accuracy (all attacks)") in text
  # The answer also says under which attacks RSR wins: the headline hides it.
  answer = next(line for line in text.splitlines()
                if line.startswith("- **RSR 85% against dense PGD-AT:**"))
  assert "Attack by attack: better under PGD-7 (+10.0 ± " in answer
  assert "APGD-CE (EOT) (+10.0 ± " in answer.split("better under")[1]
  assert "no difference beyond the noise under clean (+0.0 ± " in answer
  assert "worse under" not in answer
  assert "| `pni_at`: PNI-W channel-wise + PGD-AT, dense | not run yet |" in text
  assert "more steps never help (FAIL: PGD-20 above PGD-7)" in text
  assert "2 run(s) evaluated so far" in text
  for figure in ("accuracy_vs_sparsity.png", "accuracy_vs_eps.png"):
    assert (tmp_path / figure).stat().st_size > 0 and f"({figure})" in text


def test_the_noise_table_shows_a_tie_under_each_attack_lost_on_the_headline(tmp_path):
  # PNI-AT: PGD and APGD each leave 350 of 1,000 images in every pass, as
  # for AT, but fool different images in different passes (PGD a window of
  # images 0-249, APGD one of 250-399): only 300 survive both in a pass.
  images = np.arange(1000)[None].repeat(5, 0)
  passes = np.arange(5)[:, None]
  pgd = (images < 400) & ~((images >= 50 * passes) & (images < 50 * passes + 50))
  apgd = (images < 400) & ~((images >= 250 + 25 * passes)
                            & (images < 300 + 25 * passes))
  _write_run(tmp_path, "at", 0.0, {"clean": _first_right(600),
                                   "pgd": _first_right(350),
                                   "apgd_ce": _first_right(350)})
  _write_run(tmp_path, "pni_at", 0.0, {"clean": _first_right(600), "pgd": pgd,
                                       "apgd_ce": apgd})
  text = _report(tmp_path)
  heading = "PNI-W + PGD-AT against dense PGD-AT"
  assert "| 30.0 | 35.0 | -5.0 |" in _row(text, heading, "**robust accuracy")
  assert "no difference beyond the noise" in _row(text, heading, "PGD-7")
  section = text.split("## What the noise does to the headline")[1].split("##")[0]
  # 250 images flip under PGD, 150 under APGD, none clean: 13.3% on average.
  assert "| `pni_at` | PGD-7: 35.0 | **30.0** | 5.0 | 13.3% |" in section
  assert "| `at` | PGD-7: 35.0 | **35.0** | 0.0 | 0.0% |" in section


def test_models_are_compared_under_the_attacks_both_ran(tmp_path):
  # Transfer would fool every RSR image, but AT (the transfer source) has
  # none: the comparison leaves it out for both.
  _write_run(tmp_path, "at", 0.0, {"clean": _first_right(600),
                                   "pgd": _first_right(300)})
  _write_run(tmp_path, "rsr_85", 0.85, {"clean": _first_right(600),
                                        "pgd": _first_right(320),
                                        "transfer": _first_right(0)})
  text = _report(tmp_path)
  assert "| 32.0 | 30.0 | +2.0 |" in _row(text, "RSR 85% against dense PGD-AT",
                                          "**robust accuracy")
  # Paired over the same images: +2 points is beyond ±0.9.
  assert "±0.9 (paired over the same images" in _row(
      text, "RSR 85% against dense PGD-AT", "**robust accuracy")


def test_unpaired_when_the_images_differ(tmp_path):
  _write_run(tmp_path, "at", 0.0, {"clean": _first_right(600),
                                   "pgd": _first_right(300)})
  _write_run(tmp_path, "rsr_85", 0.85, {"clean": _first_right(600),
                                        "pgd": _first_right(320)},
             labels=LABELS[::-1])
  row = _row(_report(tmp_path), "RSR 85% against dense PGD-AT", "PGD-7")
  assert "(unpaired" in row and "no difference beyond the noise" in row


def test_a_second_seed_widens_every_margin(tmp_path):
  for seeds in (False, True):
    results = tmp_path / str(seeds)
    _write_run(results, "at", 0.0, {"clean": _first_right(600),
                                    "pgd": _first_right(300)}, "cpu_long")
    _write_run(results, "rsr_85", 0.85, {"clean": _first_right(600),
                                         "pgd": _first_right(330)}, "cpu_long")
    if seeds:  # the seeds disagree by 4 points
      _write_run(results, "at_seed1", 0.0, {"clean": _first_right(600),
                                            "pgd": _first_right(340)}, "cpu_long")
    text = _report(results, "cpu_long")
    row = _row(text, "RSR 85% against dense PGD-AT", "PGD-7")
    if not seeds:
      assert "| 33.0 | 30.0 | +3.0 | ±1.1" in row and "| yes |" in row
      assert "Every variant has one seed" in text
    else:
      assert "(1 and 2 seeds)" in row and "| 33.0 | 32.0 | +1.0 |" in row
      assert "seeds (pooled, 1 degree(s) of freedom)" in row
      assert "no difference beyond the noise" in row
      assert "`at_seed1`" in text


def test_the_cpu_long_target_and_the_learning_curves(tmp_path):
  climbing = {"val_clean_accuracy": [0.5, 0.6, 0.65, 0.7, 0.72, 0.74],
              "val_pgd_accuracy": [0.2, 0.25, 0.28, 0.30, 0.32, 0.34]}
  _write_run(tmp_path, "at", 0.0, {"clean": _first_right(740),
                                   "pgd": _first_right(340)}, "cpu_long",
             history=climbing)
  text = _report(tmp_path, "cpu_long")
  assert ("`at`: clean 74.0%, PGD-7 34.0% on 1,000 held-out images against "
          "the target of 75% and 35%: **not met**") in text
  assert "still climbing, so the budget ran out first" in text
  assert "Catastrophic overfitting" in text and "none seen" in text
  assert (tmp_path / "learning_curves_cpu_long.png").stat().st_size > 0
  assert "(learning_curves_cpu_long.png)" in text


def test_a_resumed_run_counts_the_epochs_of_its_earlier_processes(tmp_path):
  _write_run(tmp_path, "at", 0.0, {"clean": _first_right(600),
                                   "pgd": _first_right(300)},
             history={"images_per_second": [40.0, 50.0, 60.0, 200.0, 210.0, 220.0]})
  path = tmp_path / "cpu" / "at" / "metrics.json"
  metrics = json.loads(path.read_text())
  # Three of the five phase-1 epochs ran in an earlier process, 1,800 s.
  metrics["earlier_processes"] = {"epochs": 3, "training_seconds": 1800.0}
  path.write_text(json.dumps(metrics))
  row = next(line for line in _report(tmp_path).splitlines()
             if line.startswith("| `at` | 5 + 1"))
  assert "| 90 min (resumed: the training loops of 3 epochs" in row
  # The median over phase 1's epochs of both processes, not this one's 60-95.
  assert "| 60 |" in row


def test_the_document_is_the_same_bytes_every_time(tmp_path):
  _write_run(tmp_path, "at", 0.0, {"clean": _first_right(600),
                                   "pgd": _first_right(300)})
  first = _report(tmp_path)
  assert _report(tmp_path) == first


def test_nothing_run_yet_is_said_plainly(tmp_path):
  (tmp_path / "cpu").mkdir()
  text = _report(tmp_path)
  assert "0 run(s) evaluated so far" in text
  assert text.count("not measured yet.") == 3


@pytest.mark.parametrize("budget", ["cpu", "none"])
def test_missing_results_folder_is_one_line(tmp_path, budget):
  result = subprocess.run([sys.executable, SCRIPT,
                           f"--results_dir={tmp_path / 'none'}",
                           f"--budget={budget}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
  assert result.returncode != 0
  assert len(result.stderr.strip().splitlines()) == 1
  assert "run scripts/reproduce.py first" in result.stderr


@pytest.mark.parametrize("budget", ["cpu", "cpu_long"])
def test_the_committed_document_is_what_its_committed_files_give(tmp_path, budget):
  # A result file that changes (a rescore, a new run) without the document
  # being regenerated leaves REPRODUCTION*.md stale; this catches it.
  import shutil
  results = os.path.join(ROOT, "results")
  shutil.copytree(os.path.join(results, budget), tmp_path / budget)
  name = "REPRODUCTION.md" if budget == "cpu" else f"REPRODUCTION_{budget}.md"
  with open(os.path.join(results, name)) as f:
    assert _report(tmp_path, budget) == f.read(), (
        f"results/{name} is stale: run python scripts/report.py --budget={budget}")
