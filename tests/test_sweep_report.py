"""scripts/sweep_report.py: the lasso sweep's table, verdicts and selection come from metrics.json."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "sweep_report.py")


def _write(results, name, lambda_l1, trained, pruned, finetuned):
  """One run; each stage is a (clean, pgd) pair on 1,000 validation images."""
  folder = results / "lasso_sweep" / name
  folder.mkdir(parents=True)
  (folder / "metrics.json").write_text(json.dumps({
      "config": {"loss": {"lambda_l1": lambda_l1}, "seed": 0},
      "epochs": {"train": 2, "finetune": 1},
      "history": {"val_clean_accuracy": [0.1, trained[0], finetuned[0]],
                  "val_pgd_accuracy": [0.05, trained[1], finetuned[1]],
                  "l1_norm": [15000.0, 9000.0 if lambda_l1 else 14000.0, 5000.0]},
      "validation": {"examples": 1000, "after_prune": {
          "clean_accuracy": pruned[0], "pgd_accuracy": pruned[1]}},
      # As train.py writes it: sorted by name, so neither the stem nor the
      # deepest conv is at an end.
      "oneshot_layer_sparsity": {"logits": 0.4, "s1b1_conv1": 0.5,
                                 "s2b1_conv1": 0.7, "s3b3_conv1": 0.85,
                                 "s3b3_conv2": 0.9, "stem_conv": 0.3},
      "data": {"source": "image_folder:/data", "train_examples": 19000},
      "provenance": {"git_commit": "abc123def456", "date": "2026-12-01T00:00:00"}}))


def _run(results):
  return subprocess.run([sys.executable, SCRIPT, f"--results_dir={results}"],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_the_sweep_measures_each_stage_and_selects_on_validation(tmp_path):
  _write(tmp_path, "at_prune_85", 0.0, (0.70, 0.30), (0.20, 0.05), (0.65, 0.28))
  _write(tmp_path, "rsr_l1_0", 0.0, (0.68, 0.31), (0.22, 0.06), (0.64, 0.29))
  # A strong lasso survives the prune (the point of it) and ends ahead.
  _write(tmp_path, "rsr_l1_1e-3", 1e-3, (0.66, 0.30), (0.60, 0.27), (0.66, 0.34))
  result = _run(tmp_path)
  assert result.returncode == 0, result.stderr
  text = (tmp_path / "LASSO_SWEEP.md").read_text()
  rows = [l for l in text.splitlines() if l.startswith("| `")]
  assert [r.split("|")[1].strip() for r in rows] == [
      "`rsr_l1_0`", "`rsr_l1_1e-3`", "`at_prune_85`"]
  assert "| 9,000 | 0.30 / 0.90 | 66.0 ± 1.5 | 30.0 ± 1.4 | 60.0 ± 1.5 | 27.0 ± 1.4 |" in rows[1]
  assert "`rsr_l1_1e-3` after the prune: PGD-7 +22.0 points" in text
  assert "`rsr_l1_0` after fine-tuning: PGD-7 +1.0 points" in text
  assert "no difference beyond the noise" in text and "**better**" in text
  assert "**lambda_l1 = 0.001** (`rsr_l1_1e-3`, 34.0%)" in text
  assert "lead over the runner-up `rsr_l1_0`: +5.0 (±4.1): better." in text
  assert "19,000 training images" in text
  assert (tmp_path / "lasso_sweep.png").stat().st_size > 1000


def test_no_runs_is_one_line(tmp_path):
  result = _run(tmp_path)
  assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
  assert "run scripts/reproduce.py --budget=lasso_sweep first" in result.stderr


def test_the_noise_scale_twin_is_read_against_its_source(tmp_path):
  _write(tmp_path, "at_prune_85", 0.0, (0.70, 0.30), (0.20, 0.05), (0.65, 0.28))
  _write(tmp_path, "rsr_l1_2e-4", 2e-4, (0.66, 0.30), (0.50, 0.20), (0.62, 0.25))
  # Same phase 1; kept weights give more noise: PGD-7 up 10 points after the
  # prune (beyond the noise), clean down 1 after fine-tuning (within it).
  _write(tmp_path, "noise_kept_l1_2e-4", 2e-4, (0.66, 0.30), (0.50, 0.30),
         (0.61, 0.26))
  result = _run(tmp_path)
  assert result.returncode == 0, result.stderr
  text = (tmp_path / "LASSO_SWEEP.md").read_text()
  # The twin is not a lambda of the sweep: one table row per lambda run.
  rows = [l for l in text.split("## The noise scale")[0].splitlines()
          if l.startswith("| `")]
  assert [r.split("|")[1].strip() for r in rows] == ["`rsr_l1_2e-4`", "`at_prune_85`"]
  section = text.split("## The noise scale after pruning")[1]
  pruned = next(l for l in section.splitlines() if "after the prune" in l)
  assert "| 30.0 ± 1.4 | 20.0 ± 1.3 | +10.0 (±3.8): better |" in pruned
  tuned = next(l for l in section.splitlines() if "after fine-tuning" in l)
  assert "| 61.0 ± 1.5 | 62.0 ± 1.5 | -1.0 (±4.4): no difference" in tuned
