"""scripts/report.py: the document's verdicts and tables come from the JSON files."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "report.py")


def _entry(mean, std=0.01, examples=1000, draws=5):
  return {"mean": mean, "std": std, "examples": examples,
          "per_draw": [mean] * draws}


def _write_run(results, variant, sparsity, accuracies, per_example=None,
               worst_attacks=None):
  folder = results / "cpu" / variant
  folder.mkdir(parents=True)
  provenance = {"command": f"python scripts/train.py --flagfile={variant}",
                "git_commit": "abc123", "date": "2026-11-25T00:00:00+00:00"}
  (folder / "metrics.json").write_text(json.dumps({
      "sparsity": {"overall": sparsity}, "provenance": provenance,
      "epochs": {"train": 5, "finetune": 1}, "wall_seconds": 3600.0,
      "training_images_per_second": {"train": [60.0, 90.0, 95.0]},
      "config": {"loss": {"adversarial": True}, "attack": {"steps": 7}},
      "clean_accuracy": {"mean": 0.6, "std": 0.003, "examples": 10000,
                         "draws": 3},
      "data": {"source": "image_folder:/data", "train_examples": 50000,
               "eval_examples": 10000}}))
  sweep = [dict(_entry(a), eps=e / 255, steps=7)
           for e, a in ((0, 0.5), (8, accuracies["pgd"]), (64, 0.0))]
  (folder / "eval.json").write_text(json.dumps({
      "suite": {"results": {k: dict(_entry(v), **({"attacks": worst_attacks}
                                                   if k == "worst_case" else {}))
                            for k, v in accuracies.items()},
                "eps_sweep": sweep},
      "sanity_checks": [{"check": "eps = 0 reproduces clean accuracy",
                         "status": "PASS"},
                        {"check": "more steps never help", "status": "FAIL",
                         "detail": "PGD-20 above PGD-7"}],
      "config": {"noise_draws": 5}, "data": {"eval_examples": 1000},
      "provenance": dict(provenance, command="python scripts/evaluate.py")}))
  if per_example is not None:
    np.savez(folder / "per_example.npz", **per_example)


def _report(results):
  result = subprocess.run([sys.executable, SCRIPT, f"--results_dir={results}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert result.returncode == 0, result.stderr
  return (results / "REPRODUCTION.md").read_text()


def test_verdicts_follow_the_numbers(tmp_path):
  # RSR is far ahead under PGD-7, level under EOT-PGD, far behind under APGD-CE.
  _write_run(tmp_path, "at", 0.0, {"clean": 0.60, "pgd": 0.30, "eot_pgd": 0.30,
                                   "apgd_ce": 0.30, "apgd_dlr": 0.30})
  _write_run(tmp_path, "rsr_85", 0.85, {"clean": 0.60, "pgd": 0.45,
                                        "eot_pgd": 0.305, "apgd_ce": 0.20,
                                        "apgd_dlr": 0.30, "worst_case": 0.18})
  text = _report(tmp_path)
  lines = {line.split(":**")[0]: line for line in text.splitlines()
           if line.startswith("- **")}
  assert "**yes**" in lines["- **PGD-7"] and "+15.0 points" in lines["- **PGD-7"]
  assert "no difference beyond the noise" in lines["- **EOT-PGD"]
  assert "no, it is worse" in lines["- **APGD-CE with EOT"]
  assert ("RSR 85% 18.0% (every attack, per example) against dense PGD-AT "
          "30.0% (PGD-7)"
          in lines["- **Worst case over the attacks run on each"])
  assert "2 of 8 variants evaluated" in text
  assert "| `pni_at`: PNI-W channel-wise + PGD-AT, dense | not run yet |" in text
  assert "more steps never help (FAIL: PGD-20 above PGD-7)" in text
  assert ("| `rsr_85` | 5 + 1 | 7 | 60 min | 90 | 60.0 ± 0.3 (10,000 images, "
          "3 draws) | — |") in text
  assert "| `natural` | not run yet |" in text
  assert "`abc123`" in text and "python scripts/evaluate.py" in text
  for figure in ("accuracy_vs_sparsity.png", "accuracy_vs_eps.png"):
    assert (tmp_path / figure).stat().st_size > 0
    assert f"({figure})" in text


def _first_right(k, passes=5, n=1000):
  """Correct on the first k of n examples in every pass."""
  return np.arange(n)[None, :].repeat(passes, 0) < k


def _pgd_line(results):
  return next(line for line in _report(results).splitlines()
              if line.startswith("- **PGD-7"))


def test_same_images_are_compared_paired(tmp_path):
  # RSR holds the 300 images AT holds plus 20 more: +2 points, which two
  # independent samples of 1,000 could not tell apart (±4.3), but the same
  # images can (±0.9).
  labels = np.arange(1000) % 10
  _write_run(tmp_path, "at", 0.0, {"pgd": 0.30},
             {"labels": labels, "pgd": _first_right(300)})
  _write_run(tmp_path, "rsr_85", 0.85, {"pgd": 0.32},
             {"labels": labels, "pgd": _first_right(320)})
  line = _pgd_line(tmp_path)
  assert "+2.0 points" in line and "paired over the same images: ±0.9" in line
  assert "**yes**" in line


def test_a_noisy_worst_case_is_a_range_and_wins_only_if_all_of_it_does(tmp_path):
  # 4 passes. RSR: 200 images always robust; 200 fall to PGD only, 200 to
  # APGD only; 200 fall to PGD in the even passes and to APGD in the odd ones
  # (noise luck); the rest always fall. Each attack alone: 50%. Worst case
  # cross-fitted: 40% (the lucky 200 count as robust); chosen in-sample: 30%.
  # AT holds its first 350 images under both. Cross-fitted alone, RSR would
  # win by 5 points (±3.7); with the attacker-favoured end it is 5 behind.
  n, passes = 1000, 4
  index, even = np.arange(n)[None], (np.arange(passes) % 2 == 0)[:, None]
  always = (index < 200).repeat(passes, 0)
  lucky = (600 <= index) & (index < 800)
  pgd = always | ((400 <= index) & (index < 600)) | (lucky & ~even)
  apgd = always | ((200 <= index) & (index < 400)) | (lucky & even)
  labels = np.arange(n) % 10
  at = (index < 350).repeat(passes, 0)
  _write_run(tmp_path, "at", 0.0, {"pgd": 0.35, "apgd_ce": 0.35, "worst_case": 0.35},
             {"labels": labels, "pgd": at, "apgd_ce": at}, ["pgd", "apgd_ce"])
  _write_run(tmp_path, "rsr_85", 0.85,
             {"pgd": 0.50, "apgd_ce": 0.50, "worst_case": 0.40},
             {"labels": labels, "pgd": pgd, "apgd_ce": apgd}, ["pgd", "apgd_ce"])
  line = next(line for line in _report(tmp_path).splitlines()
              if line.startswith("- **Worst case"))
  assert "RSR 85% 30.0–40.0% (every attack, per example)" in line
  assert "-5.0 to +5.0 points" in line
  assert "**no difference beyond the noise and the choice of attack**" in line


def test_unpaired_when_the_images_differ_or_the_files_disagree(tmp_path):
  labels = np.arange(1000) % 10
  _write_run(tmp_path, "at", 0.0, {"pgd": 0.30},
             {"labels": labels, "pgd": _first_right(300)})
  # Other images: the labels do not match.
  _write_run(tmp_path, "rsr_85", 0.85, {"pgd": 0.32},
             {"labels": labels[::-1], "pgd": _first_right(320)})
  line = _pgd_line(tmp_path)
  assert "unpaired: ±4.3" in line and "no difference beyond the noise" in line
  # Same images, but the matrix is not the one eval.json was scored from.
  np.savez(tmp_path / "cpu" / "rsr_85" / "per_example.npz", labels=labels,
           pgd=_first_right(500))
  assert "unpaired: ±4.3" in _pgd_line(tmp_path)


def test_nothing_run_yet_is_said_plainly(tmp_path):
  (tmp_path / "cpu").mkdir()
  text = _report(tmp_path)
  assert "0 of 8 variants evaluated" in text
  assert text.split("### ")[0].count("not measured yet") == 4


def test_missing_results_folder_is_one_line(tmp_path):
  result = subprocess.run([sys.executable, SCRIPT,
                           f"--results_dir={tmp_path / 'none'}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
  assert result.returncode != 0
  assert len(result.stderr.strip().splitlines()) == 1
  assert "run scripts/reproduce.py first" in result.stderr
