"""The public API on models rsr_tf has never seen: convert, train, prune, export, run."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from PIL import Image

import rsr_tf
import user_models
from export import runner
from rsr_tf import layers as rsr_layers
from rsr_tf import pruning
from rsr_tf import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def band_data(n, seed, size=28, channels=1, num_classes=5):
  """Noise images whose class is their brightness band: learnable in a few steps.

  Class c is uniform in [0.15 c, 0.15 c + 0.3]: the means are 0.15 apart,
  far more than an 8/255 attack moves them.
  """
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % num_classes
  images = rng.uniform(0.0, 0.3, (n, size, size, channels))
  images += 0.15 * labels[:, None, None, None]
  return images.astype(np.float32), labels.astype(np.int64)


def test_the_public_names_resolve():
  for name in rsr_tf.__all__:
    assert getattr(rsr_tf, name) is not None, name
  with pytest.raises(AttributeError):
    rsr_tf.no_such_name  # pylint: disable=pointless-statement


@pytest.mark.parametrize("preset,expected", [(None, "1"), ("0", "0")])
def test_import_turns_onednn_on_for_x86_unless_the_user_chose(preset, expected):
  import platform  # noqa: E402
  if platform.machine() not in ("x86_64", "AMD64"):
    pytest.skip("oneDNN is turned on for x86 CPUs only")
  env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
  if preset is not None:
    env["TF_ENABLE_ONEDNN_OPTS"] = preset
  result = subprocess.run(
      [sys.executable, "-c", "import os, rsr_tf; "
       "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"],
      capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
  assert result.stdout.strip() == expected, result.stderr


def test_add_weight_noise_keeps_outputs_with_the_noise_off():
  model = user_models.gray_5_class()
  x, _ = band_data(8, seed=3)
  noisy = rsr_tf.add_weight_noise(model, mode="channel", alpha_init=0.25)
  kinds = [type(layer).__name__ for layer in noisy.layers]
  assert kinds.count("NoisyConv2D") == 1 and "NoisyDepthwiseConv2D" in kinds
  assert "NoisyDense" in kinds and "Conv2D" not in kinds
  # One alpha per output channel; a depthwise kernel's are in x multiplier.
  assert [tuple(a.shape) for a in rsr_layers.alphas(noisy)] == [(8,), (8, 2), (5,)]
  assert all(np.allclose(a.numpy(), 0.25) for a in rsr_layers.alphas(noisy))
  rsr_layers.set_noise_enabled(noisy, False)
  np.testing.assert_allclose(noisy(x).numpy(), model(x).numpy(), atol=1e-6)
  rsr_layers.set_noise_enabled(noisy, True)
  assert not np.allclose(noisy(x).numpy(), model(x).numpy(), atol=1e-3)
  assert model.layers[1].__class__ is keras.layers.Conv2D, "original untouched"


def test_a_final_softmax_is_dropped_with_a_warning(caplog):
  model = user_models.gray_5_class(softmax=True)
  x, _ = band_data(4, seed=4)
  with caplog.at_level(logging.WARNING, logger="rsr_tf"):
    noisy = rsr_tf.add_weight_noise(model)
  assert "ends in a softmax" in caplog.text
  rsr_layers.set_noise_enabled(noisy, False)
  probabilities = model(x).numpy()
  np.testing.assert_allclose(tf.nn.softmax(noisy(x)).numpy(), probabilities,
                             atol=1e-6)
  with pytest.raises(rsr_tf.ModelError, match="ends in a softmax.*logits_model"):
    rsr_tf.RSRTrainer(model)
  logits = rsr_tf.logits_model(model)
  np.testing.assert_allclose(tf.nn.softmax(logits(x)).numpy(), probabilities,
                             atol=1e-6)


def test_layers_without_a_twin_are_named_in_one_warning_line(caplog):
  inputs = keras.Input((12, 12, 3))
  x = keras.layers.SeparableConv2D(4, 3, name="sep")(inputs)
  x = keras.layers.Conv2D(4, 3, name="conv")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
  with caplog.at_level(logging.WARNING, logger="rsr_tf"):
    rsr_tf.add_weight_noise(model)
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 1 and "sep (SeparableConv2D)" in lines[0]
  assert "\n" not in lines[0]
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="rsr_tf"):
    pruned = rsr_tf.prune_global(model, 0.5)
  assert "not pruned" in caplog.text and "sep (SeparableConv2D)" in caplog.text
  assert set(pruning.kernels(pruned)) == {"conv", "head"}


def test_a_subclassed_model_gets_a_clear_error():
  model = user_models.Subclassed()
  model(np.zeros((1, 8, 8, 3), np.float32))
  for call in (rsr_tf.add_weight_noise, lambda m: rsr_tf.prune_global(m, 0.5),
               lambda m: rsr_tf.train_rsr(m, (np.zeros((4, 8, 8, 3)),
                                              np.zeros(4)))):
    with pytest.raises(rsr_tf.ModelError) as info:
      call(model)
    message = str(info.value)
    assert "subclassed" in message and "functional" in message
    assert "\n" not in message


def test_trainer_arguments_are_checked():
  model = user_models.gray_5_class()
  with pytest.raises(ValueError, match="eps must be in"):
    rsr_tf.RSRTrainer(model, eps=2.0)
  with pytest.raises(ValueError, match="step_size must be in"):
    rsr_tf.RSRTrainer(model, eps=0.01, step_size=0.1)
  assert not rsr_tf.RSRTrainer(model, steps=0).adversarial
  assert not rsr_tf.RSRTrainer(model, adversarial=False).adversarial


def test_a_plain_model_is_pruned_and_trained_adversarially():
  """No noise layers: PGD training plus the lasso on every prunable kernel."""
  model = user_models.gray_5_class()
  x, y = band_data(64, seed=1)
  pruned = rsr_tf.prune_global(model, 0.7)
  stripped = rsr_tf.strip(pruned)
  assert rsr_tf.measured_sparsity(stripped)["overall"] == pytest.approx(0.7, abs=0.01)
  zeros_before = {n: k.numpy() == 0 for n, k in pruning.kernels(stripped).items()}
  assert sorted(type(l).__name__ for l in pruning.prunable_layers(stripped)) == [
      "Conv2D", "Dense", "NoisyDepthwiseConv2D"]  # tfmot could not prune a plain one
  trainer = rsr_tf.RSRTrainer(pruned, steps=2, lambda_l1=1e-4)
  trainer.compile(optimizer=training.sgd(0.05, 0.9))
  ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
  # 8 adversarial steps an epoch, 2 training calls each: past tfmot's
  # default mask frequency of 100 calls, which would re-rank the weights.
  history = trainer.fit(ds, epochs=7, verbose=0,
                        callbacks=pruning.callbacks()).history
  assert min(history["adv_loss"]) > 0 and history["penalty"][0] > 0
  assert history["sparsity"][-1] == pytest.approx(0.7, abs=0.01)
  steps = {int(l.pruning_step.numpy()) for l in pruned.layers
           if hasattr(l, "pruning_step")}
  assert steps == {7 * 8 * 2}
  after = rsr_tf.strip(pruned)
  for name, kernel in pruning.kernels(after).items():
    np.testing.assert_array_equal(kernel.numpy() == 0, zeros_before[name],
                                  err_msg=f"{name}: the mask moved")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  keras.utils.set_random_seed(0)
  noisy = rsr_tf.add_weight_noise(user_models.gray_5_class())
  train, val = band_data(320, seed=0), band_data(100, seed=1)
  result = rsr_tf.train_rsr(noisy, train, val, epochs=4, target_sparsity=0.6,
                            finetune_epochs=2, steps=2, adv_delay_epochs=1,
                            learning_rate=0.05, batch_size=32,
                            validation_pgd_steps=3, verbose=0)
  return result, train, val, tmp_path_factory.mktemp("own_model")


def test_train_rsr_runs_the_whole_recipe_on_a_users_model(trained):
  result, _, (x_val, y_val), _ = trained
  assert result.epochs == [0, 1, 2, 3, 4, 5]
  assert result.history["adv_loss"][0] == 0 and result.history["adv_loss"][1] > 0
  assert len(result.history["val_clean_accuracy"]) == 6
  assert len(result.history["val_pgd_accuracy"]) == 6
  # The prune's own cost, measured before fine-tuning repairs it.
  assert set(result.after_prune) == {"clean_loss", "clean_accuracy",
                                     "pgd_accuracy"}
  assert result.after_prune["pgd_accuracy"] <= result.after_prune["clean_accuracy"]
  assert result.sparsity["overall"] == pytest.approx(0.6, abs=0.01)
  assert not pruning.is_pruned(result.model)
  assert set(result.images_per_second) == {"train", "finetune"}
  assert result.stopped_early == []
  assert len(rsr_layers.alphas(result.model)) == 3
  accuracy = np.mean([np.argmax(result.model(x_val).numpy(), -1) == y_val
                      for _ in range(3)])  # three noise draws
  assert accuracy > 0.4, "learns the bands (chance is 0.2)"


def test_noise_std_kept_is_a_phase_two_setting():
  keras.utils.set_random_seed(0)
  result = rsr_tf.train_rsr(rsr_tf.add_weight_noise(user_models.gray_5_class()),
                            band_data(64, 0), epochs=1, finetune_epochs=1,
                            steps=1, batch_size=32, noise_std="kept", verbose=0)
  assert {l.noise_std for l in rsr_layers.noisy_layers(result.model)} == {"kept"}


def test_channel_pruning_fine_tunes_a_narrower_model():
  keras.utils.set_random_seed(0)
  model = user_models.wide_cnn((28, 28, 1), 5)  # 32 wide: 8-wide steps can cut
  result = rsr_tf.train_rsr(model, band_data(64, 0), epochs=1, finetune_epochs=1,
                            steps=1, batch_size=32, prune_structure="channel",
                            target_sparsity=0.3, lambda_group=1e-3, verbose=0)
  plan = result.channel_plan
  assert plan.macs_removed >= 0.3 and plan.params_after < plan.params_before
  assert result.model.count_params() < model.count_params()
  assert not pruning.is_pruned(result.model)
  assert result.epochs == [0, 1]  # fine-tuned, on the narrow model
  assert result.model(band_data(4, 1)[0]).shape == (4, 5)
  with pytest.raises(ValueError, match="needs prune_schedule='oneshot'"):
    rsr_tf.train_rsr(model, band_data(64, 0), epochs=1, prune_structure="channel",
                     prune_schedule="polynomial", verbose=0)
  # A target the architecture cannot reach fails before phase 1 trains.
  never = keras.callbacks.LambdaCallback(
      on_train_begin=lambda logs: pytest.fail("phase 1 started"))
  with pytest.raises(ValueError, match="out of reach"):
    rsr_tf.train_rsr(model, band_data(64, 0), epochs=1, prune_structure="channel",
                     target_sparsity=0.99, steps=1, batch_size=32,
                     callbacks=[never], verbose=0)


def test_early_stopping_in_phase_one_still_prunes_and_fine_tunes():
  keras.utils.set_random_seed(0)
  stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0,
                                       min_delta=1e9)  # stops after epoch 1
  result = rsr_tf.train_rsr(user_models.gray_5_class(), band_data(64, 0),
                            epochs=4, finetune_epochs=1, steps=1,
                            batch_size=32, callbacks=[stop], verbose=0)
  assert result.epochs == [0, 1, 4]
  assert "train" in result.stopped_early
  assert result.sparsity["overall"] == pytest.approx(0.85, abs=0.01)


def test_export_and_runner_on_a_28x28_grayscale_model(trained):
  result, (x_train, _), (x_val, y_val), folder = trained
  out = folder / "export"
  report = rsr_tf.export(result.model, str(out),
                         formats=("tflite_float", "tflite_int8"),
                         representative_data=x_train[:64],
                         validation_data=(x_val, y_val),
                         class_names=[f"band{i}" for i in range(5)])
  assert report["passed"], report["failed_checks"]
  assert report["model"]["input_shape"] == [28, 28, 1]
  assert report["model"]["num_classes"] == 5
  assert sorted(os.listdir(out)) == ["export.json", "labels.txt", "model.keras",
                                     "model_float.tflite", "model_int8.tflite"]
  png = folder / "band3.png"
  Image.fromarray((x_val[3, :, :, 0] * 255).round().astype(np.uint8),
                  "L").save(png)
  labels, probabilities = runner.classify(str(out / "model_int8.tflite"),
                                          [str(png)])
  assert probabilities.shape == (1, 5)
  printed = subprocess.run(
      [sys.executable, os.path.join(ROOT, "export", "runner.py"),
       str(out / "model_float.tflite"), str(png)],
      capture_output=True, text=True, check=True).stdout
  assert printed.startswith(f"{png}\tband")
  del labels


def test_export_leaves_the_callers_model_as_it_was(trained):
  result, (x_train, _), _, folder = trained
  report = rsr_tf.export(result.model, str(folder / "deterministic"),
                         formats=("tflite_float",), noise=False,
                         representative_data=x_train[:32])
  assert report["passed"] and report["noise"] == "off"
  assert all(l.noise_enabled for l in rsr_layers.noisy_layers(result.model))


def test_the_readme_example_runs_as_written(tmp_path):
  """README.md's "Bring your own model" code block, executed unchanged."""
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  start = text.index("<!-- byom-example -->")
  block = text[start:].split("```python\n", 1)[1].split("```", 1)[0]
  code = compile(block, "README.md", "exec")
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    namespace = {}
    exec(code, namespace)  # pylint: disable=exec-used
  finally:
    os.chdir(cwd)
  assert namespace["result"].sparsity["overall"] == pytest.approx(0.85, abs=0.01)
  assert (tmp_path / "my_export" / "model_int8.tflite").exists()
  # aa_rand on the user's 28x28x1, 4-class model: APGD-CE then APGD-DLR on
  # the images still robust, each row the robust accuracy after it.
  report = namespace["report"]
  results = report["results"]
  assert report["config"]["preset"] == "aa_rand" and report["stochastic"]
  assert results["robust_all"]["attacks"] == ["clean", "apgd_ce", "apgd_dlr"]
  assert (results["clean"]["mean"] >= results["apgd_ce"]["mean"]
          >= results["apgd_dlr"]["mean"] == results["robust_all"]["mean"])
  # Only images classified correctly in some clean pass are attacked at all.
  assert results["apgd_dlr"]["attacked"] <= results["apgd_ce"]["attacked"] < 128
  assert results["apgd_ce"]["eot_samples"] == 2


def _cpu_flags():
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].split() for line in f
                   if line.startswith("flags")), [])
  except OSError:
    return []


# The golden weights are bit-exact only on the kind of CPU that wrote them:
# without AVX-512 TensorFlow runs other kernels (Eigen's before bbf3d2f,
# oneDNN's AVX2 ones since), and rounding differs. On a 2-core AMD EPYC
# without AVX-512 (2026-12-02, Eigen), 3b1b81d's code and today's gave
# bit-identical weights to each other, and both differed from the file.
@pytest.mark.skipif("avx512f" not in _cpu_flags(),
                    reason="golden weights were written on an AVX-512 CPU")
def test_seeded_run_gives_the_golden_weights_of_the_commit_before_the_api():
  """experiment.run through train_rsr: bit for bit what 3b1b81d trained."""
  golden = os.path.join(ROOT, "tests", "golden", "resnet20_3b1b81d.npz")
  out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"golden-{os.getpid()}.npz")
  subprocess.run([sys.executable, os.path.join(ROOT, "tests", "golden_run.py"),
                  out], check=True, capture_output=True)
  try:
    with np.load(golden) as want, np.load(out) as got:
      assert want.files == got.files
      for name in want.files:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  finally:
    os.remove(out)
