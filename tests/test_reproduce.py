"""scripts/reproduce.py: one line for bad input, finished steps skipped, results collected."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "reproduce.py")


def _run(*args, timeout=60):
  # tests/ on the path: the tiny budget trains a model of tests/user_models.py.
  env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "tests")}
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT, env=env)


def _budget(tmp_path, variants, **extra):
  """A budget folder of tiny flagfiles whose runs go under tmp_path/runs."""
  for variant in variants:
    folder = tmp_path / "configs" / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"--output_dir={tmp_path / 'runs' / variant}", *extra.get(variant, [])]
    (folder / f"{variant}.flags").write_text("\n".join(lines) + "\n")
  return [f"--configs_dir={tmp_path / 'configs'}", "--budget=tiny",
          f"--variants={','.join(variants)}",
          f"--results_dir={tmp_path / 'results'}"]


def test_bad_input_gives_one_line(tmp_path):
  for args, expected in ((["--budget=nope"], "no folder"),
                         (["--variants=at,nope"], "no flagfile"),
                         (["--steps=train,polish"], "unknown polish"),
                         (["--image_folder=/nonexistent"], "/nonexistent")):
    result = _run(*args)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert expected in result.stderr


def test_finished_steps_are_skipped_and_results_collected(tmp_path):
  args = _budget(tmp_path, ["at", "rsr_85"])
  for variant in ("at", "rsr_85"):
    run = tmp_path / "runs" / variant
    (run / "eval").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"variant": variant}))
    (run / "eval" / "eval.json").write_text(json.dumps({"eval": variant}))
    (run / "model.keras").write_bytes(variant.encode())
  # Had either step not been skipped, it would fail on these fake files.
  result = _run(*args)
  assert result.returncode == 0, result.stderr
  assert "at: trained" in result.stdout and "rsr_85: evaluated" in result.stdout
  results = tmp_path / "results" / "tiny"
  assert json.loads((results / "rsr_85" / "metrics.json").read_text()) == {
      "variant": "rsr_85"}
  assert json.loads((results / "at" / "eval.json").read_text()) == {"eval": "at"}
  assert (tmp_path / "results" / "models" / "tiny" / "rsr_85.keras"
          ).read_bytes() == b"rsr_85"


def test_evaluate_needs_the_transfer_source(tmp_path):
  args = _budget(tmp_path, ["rsr_85"])
  run = tmp_path / "runs" / "rsr_85"
  run.mkdir(parents=True)
  (run / "metrics.json").write_text("{}")
  result = _run(*args, "--steps=train,evaluate")
  assert result.returncode != 0
  assert "transfer source" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  _budget(tmp_path, ["at"])
  result = _run(*args, "--steps=train,evaluate")
  assert "train at first" in result.stderr, result.stderr


def test_a_tiny_budget_trains_evaluates_and_collects(tmp_path):
  # A small model of the user's own (tests/user_models.py): the subject is
  # the pipeline, not the network, and a ResNet takes several times longer.
  tiny = ["--model=user_models:small_cnn", "--train_limit=128", "--batch_size=64",
          "--epochs=1", "--pgd_steps=1", "--eps_step=8", "--eval_noise_draws=1",
          "--eval_limit=32"]
  args = _budget(tmp_path, ["at"], at=tiny + ["--noise=none",
                                              "--prune_schedule=none"])
  result = _run(*args, "--embedded_sample", "--eval_limit=16",
                "--attacks=clean,pgd,transfer", timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  report = json.loads((tmp_path / "results" / "tiny" / "at" / "eval.json")
                      .read_text())
  # The baseline is its own transfer source, so it gets no transfer attack.
  assert set(report["suite"]["results"]) == {"clean", "pgd", "robust_all"}
  card = tmp_path / "results" / "tiny" / "at" / "model_card.json"
  assert json.loads(card.read_text())["robust_accuracy_all_attacks"]["mean"] == (
      report["suite"]["results"]["robust_all"]["mean"])
  assert (tmp_path / "results" / "models" / "tiny" / "at.keras").stat().st_size > 0
  assert "$ python scripts/train.py" in (tmp_path / "runs" / "at" / "train.log"
                                          ).read_text()


def test_a_variant_starting_from_another_runs_after_it(tmp_path):
  sys.path.insert(0, ROOT)
  from scripts import reproduce
  for name, extra in (("a_twin", "--init_from=runs/x/z_source\n"),
                      ("z_source", ""), ("at", "")):
    (tmp_path / f"{name}.flags").write_text(f"--output_dir=runs/x/{name}\n{extra}")
  (tmp_path / "_shared.flags").write_text("--epochs=1\n")
  # By name alone a_twin would run first, before the phase 1 it restores.
  assert reproduce.budget_variants(str(tmp_path)) == ["at", "z_source", "a_twin"]


def test_the_data_record_names_the_data_not_its_path(tmp_path):
  # The same files at another path keep the committed record; other data is
  # refused before any step runs.
  for name in ("a", "b"):
    (tmp_path / name / "train" / "cat").mkdir(parents=True)
    (tmp_path / name / "test" / "cat").mkdir(parents=True)
    for split in ("train", "test"):
      (tmp_path / name / split / "cat" / "0.jpg").write_bytes(b"same bytes")
  args = [*_budget(tmp_path, ["at"]), "--steps=collect"]
  record = tmp_path / "results" / "tiny" / "data.json"
  assert _run(*args, f"--image_folder={tmp_path / 'a'}").returncode == 0
  first = record.read_text()
  assert json.loads(first)["files"] == 2
  result = _run(*args, f"--image_folder={tmp_path / 'b'}")
  assert result.returncode == 0, result.stderr
  assert record.read_text() == first  # still names folder a
  (tmp_path / "b" / "test" / "cat" / "0.jpg").write_bytes(b"other bytes")
  result = _run(*args, f"--image_folder={tmp_path / 'b'}")
  assert result.returncode != 0
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert "records other data" in result.stderr
  assert record.read_text() == first
