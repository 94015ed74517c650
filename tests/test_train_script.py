"""scripts/train.py: clean one-line errors for bad input, and a tiny end-to-end run."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train.py")


# A small model of the user's own (tests/user_models.py): runs whose subject
# is the run itself (resume, --init_from, schedules, errors) train it rather
# than a ResNet, which takes several times longer to trace.
SMALL = "--model=user_models:small_cnn"
ENV = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "tests")}


def _run(*args, timeout=60):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT, env=ENV)


def _error_lines(result):
  return [line for line in result.stderr.splitlines() if "error" in line]


@pytest.mark.parametrize("args,expected", [
    (["--eps=-1"], "--eps"),
    (["--target_sparsity=1.0"], "--target_sparsity must be in [0, 1)"),
    (["--target_sparsity=-0.1"], "--target_sparsity"),
    (["--model=resnet50"], "--model"),
    (["--noise=gaussian"], "--noise"),
    (["--eps=2", "--eps_step=4"], "--eps_step"),
    (["--image_folder=/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--output_dir=/proc/rsr-cannot-write"], "not writable"),
    (["--prune_schedule=none", "--finetune_epochs=2"], "--finetune_epochs"),
    (["--embedded_sample", "--image_folder=/tmp"], "two data sources"),
    (["--lr_milestones=half"], "--lr_milestones"),
    (["--model=missing.keras"], "--model 'missing.keras' does not exist"),
    (["--image_size=32"], "--image_size must be H,W"),
    (["--channels=2"], "--channels"),
    (["--validation_pgd_steps=7", "--validation_eps_step=9"],
     "--validation_eps_step"),
    (["--prune_structure=channel", "--prune_schedule=polynomial"],
     "--prune_structure=channel prunes once"),
    (["--lr_schedule=step"], "--lr_milestone_epochs must be increasing epochs"),
    (["--lr_schedule=step", "--lr_milestone_epochs=x"], "--lr_milestone_epochs"),
    (["--batch_size=64", "--train_limit=10"], "smaller than one batch"),
])
def test_bad_flags_give_one_clear_line(args, expected, tmp_path):
  result = _run(*args, f"--output_dir={tmp_path}" if not any(
      a.startswith("--output_dir") for a in args) else "--seed=0")
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert expected in lines[0]
  assert "Traceback" not in result.stderr


def test_help_lists_the_flags():
  result = _run("--helpshort")  # absl exits 1 after printing help
  for flag in ("--target_sparsity", "--prune_schedule", "--noise", "--eps",
               "--image_folder", "--train_limit"):
    assert flag in result.stdout


def test_tiny_end_to_end_run_writes_measured_outputs(tmp_path):
  out = tmp_path / "run"
  result = _run(SMALL, "--embedded_sample", "--train_limit=128", "--eval_limit=64",
                "--batch_size=64", "--epochs=1", "--finetune_epochs=1",
                "--pgd_steps=2", "--eps_step=4", "--target_sparsity=0.6",
                "--eval_noise_draws=2", "--mixed_precision=mixed_bfloat16",
                f"--output_dir={out}", timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["sparsity"]["overall"] == pytest.approx(0.6, abs=0.01)
  assert len(metrics["clean_accuracy"]["per_draw"]) == 2
  assert metrics["data"] == {**metrics["data"], "train_examples": 128,
                             "eval_examples": 64}
  assert metrics["provenance"]["command"].endswith(f"--output_dir={out}")
  assert metrics["earlier_processes"] is None, "one process trained it all"
  assert metrics["config"]["prune"]["schedule"] == "oneshot"
  for name in ("model.keras", "config.json", "training_curves.png", "history.csv"):
    assert (out / name).is_file(), name
  assert os.listdir(out / "checkpoints" / "finetune")
  assert "clean accuracy" in result.stdout and "sparsity" in result.stdout
  leftovers = [n for n in os.listdir(out) if n.startswith(".")]
  assert not leftovers, f"temporary files left behind: {leftovers}"

  from rsr_tf import models, pruning
  model = models.load(str(out / "model.keras"))
  assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}, \
      "trained in bfloat16, saved in float32"
  assert pruning.measured_sparsity(model)["overall"] == pytest.approx(
      metrics["sparsity"]["overall"])


def test_polynomial_schedule_reaches_its_target_through_the_script(tmp_path):
  out = tmp_path / "poly"
  result = _run(SMALL, "--embedded_sample", "--train_limit=128", "--eval_limit=32",
                "--batch_size=64", "--epochs=2", "--prune_schedule=polynomial",
                "--finetune_epochs=0", "--target_sparsity=0.5", "--pgd_steps=1",
                "--eps_step=8", "--eval_noise_draws=1", "--noaugment",
                f"--output_dir={out}", timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
  assert metrics["history"]["sparsity"][0] < metrics["history"]["sparsity"][-1]


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path):
  """SIGKILL inside the second epoch; the same command carries on.

  The pruning schedule reaches its target only at the last training call, so
  the final sparsity is on target only if tfmot's step survived the kill.
  """
  import signal
  import time
  out = tmp_path / "resume"
  # The small model runs an epoch in well under a second once traced, so
  # there are many epochs to land the kill in.
  epochs = 30
  args = [sys.executable, SCRIPT, SMALL, "--embedded_sample", "--train_limit=128",
          "--eval_limit=32", "--batch_size=64", f"--epochs={epochs}",
          "--prune_schedule=polynomial", "--target_sparsity=0.5",
          f"--prune_end_epoch={epochs}", "--prune_frequency=1",
          "--finetune_epochs=0", "--pgd_steps=1",
          "--eps_step=8", "--eval_noise_draws=1", f"--output_dir={out}"]
  process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=ENV)
  index = out / "checkpoints" / "train" / "checkpoint"
  deadline = time.time() + 300
  while not index.exists() and time.time() < deadline and process.poll() is None:
    time.sleep(0.1)
  time.sleep(0.5)  # into the second epoch
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert index.exists(), "no checkpoint was written before the kill"

  result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          timeout=400, env=ENV)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "train: resuming after epoch" in result.stderr
  metrics = json.loads((out / "metrics.json").read_text())
  assert len(metrics["history"]["loss"]) == epochs, "every epoch once, across both runs"
  here = len(metrics["training_images_per_second"]["train"])
  assert here < epochs
  # The killed process's epochs count in the run's time, from their logged
  # images/s: 128 images (two batches of 64) per epoch.
  earlier = metrics["earlier_processes"]
  assert earlier["epochs"] == epochs - here
  assert earlier["training_seconds"] == pytest.approx(sum(
      128 / r for r in metrics["history"]["images_per_second"][:epochs - here]))
  # A restarted step would end below the target (the schedule's value at
  # the step it restarted from, plus the epochs since).
  assert abs(metrics["sparsity"]["overall"] - 0.5) < 1e-3, metrics["sparsity"]

  changed = subprocess.run(args[:-1] + ["--lr=0.5", f"--output_dir={out}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env=ENV)
  assert changed.returncode != 0
  last = changed.stderr.strip().splitlines()[-1]
  assert "different configuration (optimizer.learning_rate;" in last


def test_a_diverging_run_exits_with_one_line_naming_the_term(tmp_path):
  result = _run(SMALL, "--embedded_sample", "--train_limit=128", "--eval_limit=32",
                "--batch_size=64", "--epochs=1", "--prune_schedule=none",
                "--pgd_steps=1", "--eps_step=8", "--lr=1e30",
                f"--output_dir={tmp_path / 'nan'}", timeout=300)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("train.py: error: train: training stopped at epoch 1")
  assert "not finite" in last
  assert not (tmp_path / "nan" / "model.keras").exists()


def test_init_from_prunes_another_runs_phase_one_without_retraining(tmp_path):
  tiny = [SMALL, "--embedded_sample", "--train_limit=128", "--eval_limit=32",
          "--batch_size=64", "--epochs=1", "--finetune_epochs=1",
          "--pgd_steps=1", "--eps_step=8", "--eval_noise_draws=1",
          "--validation_size=32", "--validation_pgd_steps=2"]
  first = _run(*tiny, "--target_sparsity=0.5", f"--output_dir={tmp_path / 'a'}",
               timeout=400)
  assert first.returncode == 0, first.stderr[-2000:]
  sweep = _run(*tiny, "--target_sparsity=0.8", f"--init_from={tmp_path / 'a'}",
               f"--output_dir={tmp_path / 'b'}", timeout=400)
  assert sweep.returncode == 0, sweep.stderr[-2000:]
  assert "phase 1: 1 epochs restored from" in sweep.stderr
  assert "Epoch 1/1" not in sweep.stdout + sweep.stderr  # phase 1 not rerun
  metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
  # After one epoch the global threshold takes all but one weight of two
  # small layers (a layer keeps at least one), so 459 of 576 go, not 461.
  assert abs(metrics["sparsity"]["overall"] - 0.8) < 0.005
  first_history = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]
  # Phase 1's epoch is the first run's; fine-tuning adds one of its own.
  assert metrics["history"]["clean_accuracy"][0] == first_history["clean_accuracy"][0]
  assert len(metrics["history"]["clean_accuracy"]) == 2
  # Validation on 32 training images held out; PGD-2 on them every epoch
  # and on the pruned model before fine-tuning; the final check is PGD-2.
  assert metrics["data"]["train_examples"] == 96
  assert metrics["validation"]["examples"] == 32
  assert metrics["validation"]["source"] == "held out of the training images"
  assert set(metrics["validation"]["after_prune"]) >= {"clean_accuracy",
                                                       "pgd_accuracy"}
  assert len(metrics["history"]["val_pgd_accuracy"]) == 2
  assert metrics["pgd"]["steps"] == 2 and metrics["pgd"]["step_size"] == 2 / 255
  # Anything but pruning and fine-tuning differing is refused in one line.
  other = _run(*tiny, "--lr=0.05", f"--init_from={tmp_path / 'a'}",
               f"--output_dir={tmp_path / 'c'}", timeout=120)
  assert other.returncode != 0
  assert "trained with other settings" in other.stderr.strip().splitlines()[-1]


def _gray_folder(root, classes=3, size=40, train=12, test=6):
  """A 40x40 grayscale image folder: class c is bright in band c."""
  import numpy as np  # noqa: E402
  from PIL import Image  # noqa: E402
  rng = np.random.default_rng(0)
  for split, count in (("train", train), ("test", test)):
    for c in range(classes):
      folder = root / split / f"class{c}"
      folder.mkdir(parents=True)
      for i in range(count):
        pixels = rng.integers(0, 90, (size, size))
        pixels[c * size // classes:(c + 1) * size // classes] += 150
        Image.fromarray(pixels.astype(np.uint8), "L").save(folder / f"{i}.png")
  return root


def test_a_factory_model_trains_on_a_40x40_grayscale_folder(tmp_path):
  data = _gray_folder(tmp_path / "data")
  out = tmp_path / "run"
  env = ENV
  result = subprocess.run(
      [sys.executable, SCRIPT, "--model=user_models:small_cnn",
       f"--image_folder={data}", "--channels=1", "--batch_size=12",
       "--epochs=2", "--adv_delay_epochs=1", "--finetune_epochs=1",
       "--pgd_steps=2", "--target_sparsity=0.5", "--eval_noise_draws=2",
       f"--output_dir={out}"], capture_output=True, text=True, timeout=300,
      cwd=ROOT, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out / "metrics.json") as f:
    metrics = json.load(f)
  assert metrics["model"] == {"spec": "user_models:small_cnn",
                              "input_shape": [40, 40, 1], "num_classes": 3}
  assert metrics["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
  assert metrics["mean_alpha"] is not None, "--noise=channel made it noisy"
  assert set(metrics["training_images_per_second"]) == {"train", "finetune"}
  # A factory that does not fit the data is refused in one line.
  bad = subprocess.run(
      [sys.executable, SCRIPT, "--model=user_models:no_such_factory",
       f"--image_folder={data}", f"--output_dir={tmp_path / 'bad'}"],
      capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
  assert bad.returncode != 0
  assert _error_lines(bad) == [line for line in bad.stderr.splitlines()
                               if "no_such_factory" in line]


def test_channel_pruning_through_the_script_saves_a_narrower_model(tmp_path):
  out = tmp_path / "channel"
  result = _run("--model=user_models:wide_cnn", "--embedded_sample",
                "--train_limit=128", "--eval_limit=32", "--batch_size=64",
                "--epochs=1", "--finetune_epochs=1", "--pgd_steps=1",
                "--eps_step=8", "--eval_noise_draws=1", "--lambda_group=1e-3",
                "--prune_structure=channel", "--target_sparsity=0.4",
                f"--output_dir={out}", timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((out / "metrics.json").read_text())
  plan = metrics["channels"]
  assert plan["macs_removed"] >= 0.4 and plan["params_after"] < plan["params_before"]
  from rsr_tf import models  # noqa: E402
  model = models.load(str(out / "model.keras"))  # the narrow model, folds and all
  assert model.count_params() == metrics["parameters"] < plan["params_before"]
