"""The evaluation suite: attacks that work, honest noise draws, sanity checks."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from helpers import colour_data, tiny_model
from rsr_tf import attacks
from rsr_tf import config as config_lib
from rsr_tf import classifiers
from rsr_tf import evaluation
from rsr_tf import layers as rsr_layers
from rsr_tf import sanity
from rsr_tf import suite as suite_lib
from rsr_tf import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trained(noise="none", epochs=12):
  images, labels = colour_data(192)
  model = tiny_model(noise=noise)
  trainer = training.RSRTrainer(model, adversarial=False)
  trainer.compile(optimizer=training.sgd(0.05, 0.9))
  trainer.fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(32),
              epochs=epochs, verbose=0)
  return model


@pytest.fixture(scope="module")
def deterministic():
  keras.utils.set_random_seed(0)
  return _trained("none")


def _accuracy(model, x, y):
  return float(np.mean(np.argmax(model(x, training=False), -1) == y))


def test_pgd_hurts_a_deterministic_model_and_fgsm_at_eps_zero_does_not(deterministic):
  x, y = colour_data(96, seed=1)
  fn = attacks.inference_fn(deterministic)
  clean = _accuracy(deterministic, x, y)
  assert clean > 0.8
  x_adv = attacks.pgd(fn, tf.constant(x), y, eps=0.3, step_size=0.05, steps=10)
  assert _accuracy(deterministic, x_adv, y) < clean - 0.3
  x_same = attacks.fgsm(fn, tf.constant(x), y, eps=0.0)
  assert _accuracy(deterministic, x_same, y) == clean


def test_eot_with_one_sample_is_pgd_under_the_same_seed():
  model = tiny_model(noise="channel")  # noisy: both draw the same noise
  fn = attacks.inference_fn(model)
  x, y = colour_data(16)
  x = tf.constant(x)
  tf.random.set_seed(7)
  plain = attacks.pgd(fn, x, y, eps=8 / 255, step_size=2 / 255, steps=3)
  tf.random.set_seed(7)
  eot = attacks.eot_pgd(fn, x, y, eps=8 / 255, step_size=2 / 255, steps=3,
                        eot_samples=1)
  np.testing.assert_allclose(plain, eot, atol=1e-6)
  tf.random.set_seed(7)
  averaged = attacks.eot_pgd(fn, x, y, eps=8 / 255, step_size=2 / 255, steps=3,
                             eot_samples=4)
  assert np.max(np.abs(averaged.numpy() - x.numpy())) <= 8 / 255 + 1e-6


class _QuantisedInput(keras.Model):
  """Gradient masking planted on purpose: the input is rounded to 5 levels,
  so the gradient is exactly zero while the prediction still depends on x."""

  def __init__(self, model):
    super().__init__()
    self.model = model

  def call(self, x, training=False):
    quantised = tf.round(x * 4) / 4
    return self.model(quantised + 0.0 * x, training=training)


def test_sanity_checks_flag_planted_gradient_masking(deterministic):
  x, y = colour_data(64, seed=2)
  masked = classifiers.from_keras(_QuantisedInput(deterministic), name="masked",
                                 num_classes=3)
  twin = classifiers.from_keras(deterministic, name="twin")
  cfg = config_lib.EvalConfig(attacks=("clean", "pgd", "transfer"), eps=0.3,
                              step_size=0.075, steps=7, noise_draws=2,
                              batch_size=32)
  suite = suite_lib.run_suite(masked, x, y, cfg, source=twin)
  r = suite["results"]
  assert r["transfer"]["mean"] < r["pgd"]["mean"]
  checks = {c["check"]: c["status"] for c in sanity.sanity_checks(suite)}
  assert checks["black-box transfer is weaker than white-box (transfer >= PGD)"] == "FAIL"

  honest = suite_lib.run_suite(twin, x, y, cfg, source=twin)
  checks = {c["check"]: c["status"] for c in sanity.sanity_checks(honest)}
  assert checks["black-box transfer is weaker than white-box (transfer >= PGD)"] == "PASS"


def test_noisy_accuracy_is_reported_over_independent_draws():
  model = tiny_model(noise="element", num_classes=3)
  for layer in rsr_layers.noisy_layers(model):
    layer.alpha.assign(tf.fill(layer.alpha.shape, 2.0))  # very noisy
  x, y = colour_data(64)
  cfg = config_lib.EvalConfig(attacks=("clean",), noise_draws=4, batch_size=32)
  suite = suite_lib.run_suite(classifiers.from_keras(model), x, y, cfg)
  clean = suite["results"]["clean"]
  assert suite["stochastic"]
  assert clean["draws"] == 4 and len(set(clean["per_draw"])) > 1
  assert clean["std"] == pytest.approx(np.std(clean["per_draw"]))


def _entry(mean, std=0.0, examples=100, steps=7):
  return {"mean": mean, "std": std, "examples": examples, "steps": steps}


def test_eot_on_a_deterministic_model_takes_one_draw(deterministic):
  # Every draw of a deterministic model gives the same gradient: averaging
  # ten would cost ten times as much for the same attack.
  x, y = colour_data(16, seed=4)
  cfg = config_lib.EvalConfig(attacks=("clean", "eot_pgd", "apgd_ce"), eps=0.1,
                              step_size=0.03, steps=2, eot_samples=10,
                              apgd_steps=2, apgd_eot_samples=5, noise_draws=2,
                              batch_size=16)
  suite = suite_lib.run_suite(classifiers.from_keras(deterministic), x, y, cfg)
  assert not suite["stochastic"]
  assert suite["results"]["eot_pgd"]["eot_samples"] == 1
  assert suite["results"]["apgd_ce"]["eot_samples"] == 1


def test_sanity_checks_on_planted_results():
  suite = {"results": {"clean": _entry(0.8), "fgsm": _entry(0.5),
                       "pgd": {**_entry(0.4), "on_blackbox_subset": _entry(0.4)},
                       "pgd_strong": _entry(0.45, steps=20),
                       "eot_pgd": _entry(0.6), "transfer": _entry(0.7),
                       "square": _entry(0.3), "apgd_ce": _entry(0.5)},
           "eps_sweep": [{**_entry(0.8), "eps": 0.0}, {**_entry(0.6), "eps": 4 / 255},
                         {**_entry(0.7), "eps": 8 / 255},
                         {**_entry(0.02), "eps": 64 / 255}],
           "skipped": {}, "stochastic": True}
  status = {c["check"]: c["status"] for c in sanity.sanity_checks(suite)}
  assert status == {
      "eps = 0 reproduces clean accuracy": "PASS",
      "accuracy does not rise as eps grows": "FAIL",
      "PGD at the largest eps of the sweep brings accuracy to <= 5%": "PASS",
      "more PGD steps never help the model (PGD-strong <= PGD)": "FAIL",
      "iterative beats single-step (PGD <= FGSM)": "PASS",
      "black-box transfer is weaker than white-box (transfer >= PGD)": "PASS",
      "black-box queries are weaker than white-box (Square >= PGD, same images)": "FAIL",
      "EOT does not help the model (EOT-PGD <= PGD)": "FAIL",
      "APGD with EOT is at least as strong as PGD (APGD-CE <= PGD)": "FAIL",
  }
  suite["results"]["apgd_ce"] = _entry(0.38)
  assert sanity.sanity_checks(suite)[-1]["status"] == "PASS"
  suite["results"] = {"clean": _entry(0.8)}
  suite["eps_sweep"] = []
  assert {c["status"] for c in sanity.sanity_checks(suite)} == {"SKIPPED"}


def _cifar_sized_model():
  inputs = keras.Input((32, 32, 3))
  x = rsr_layers.NoisyConv2D(4, 3, strides=4, noise="channel")(inputs)
  x = keras.layers.ReLU()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, rsr_layers.NoisyDense(10, noise="channel")(x))


def test_keras_and_saved_model_formats_load(tmp_path):
  model = _cifar_sized_model()
  keras_path = str(tmp_path / "m.keras")
  model.save(keras_path)
  saved_dir = str(tmp_path / "saved")
  serve = tf.function(lambda image: {"logits": model(image, training=False)},
                      input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
  tf.saved_model.save(model, saved_dir, signatures={"serving_default": serve})
  x = tf.random.uniform((3, 32, 32, 3))
  for path in (keras_path, saved_dir):
    classifier = classifiers.load_classifier(path)
    assert classifier.differentiable and classifier.num_classes == 10
    assert classifier.logits_fn(x).shape == (3, 10)
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(classifier.logits_fn(x))
    assert tape.gradient(loss, x) is not None


@pytest.mark.parametrize("name,content,expected", [
    ("m.txt", b"hello", "unknown model format"),
    ("m.keras", b"not a zip", "is not a Keras model file"),
])
def test_bad_model_files_give_one_line_errors(tmp_path, name, content, expected):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(ValueError, match=expected):
    classifiers.load_classifier(str(path))


def _evaluate(*args, timeout=60):
  return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"),
                         *args], capture_output=True, text=True, timeout=timeout,
                        cwd=ROOT)


@pytest.mark.parametrize("args,expected", [
    ([], "--model is required"),
    (["--model=/nonexistent.keras"], "does not exist"),
    (["--model={m}", "--attacks=pgd,cw"], "unknown names ['cw']"),
    (["--model={m}", "--eps=0"], "--eps must be in (0, 255]/255"),
    (["--model={m}", "--spsa_samples=3"], "--spsa_samples"),
    (["--model={m}", "--image_folder=/nonexistent"], "/nonexistent"),
    (["--model={bad}"], "is not a Keras model file"),
])
def test_evaluate_script_bad_input_is_one_line(tmp_path, args, expected):
  good = tmp_path / "m.keras"
  _cifar_sized_model().save(str(good))
  bad = tmp_path / "bad.keras"
  bad.write_bytes(b"junk")
  args = [a.format(m=good, bad=bad) for a in args]
  source = [] if any("image_folder" in a for a in args) else ["--embedded_sample"]
  result = _evaluate(*args, *source, f"--output_dir={tmp_path / 'out'}")
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]


def test_evaluate_script_end_to_end(tmp_path):
  model_path = tmp_path / "m.keras"
  _cifar_sized_model().save(str(model_path))
  out = tmp_path / "eval"
  result = _evaluate(f"--model={model_path}", f"--source_model={model_path}",
                     "--embedded_sample", "--eval_limit=40", "--batch_size=20",
                     "--noise_draws=2", "--pgd_steps=2", "--strong_steps=3",
                     "--eot_samples=2", "--apgd_steps=2", "--apgd_eot_samples=2",
                     "--square_queries=20", "--blackbox_limit=3",
                     "--eps_sweep=0,8", f"--output_dir={out}", timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / "eval.json").read_text())
  ran = set(report["suite"]["results"])
  assert ran == {"clean", "fgsm", "pgd", "pgd_strong", "eot_pgd", "apgd_ce",
                 "apgd_dlr", "transfer", "square", "robust_all"}
  # Square ran on 3 images only: a check, not part of the headline.
  assert report["suite"]["results"]["square"]["examples"] == 3
  assert report["suite"]["results"]["robust_all"]["attacks"] == [
      "clean", "fgsm", "pgd", "pgd_strong", "eot_pgd", "apgd_ce", "apgd_dlr",
      "transfer"]
  for entry in report["suite"]["results"].values():
    assert entry["draws"] == 2 and len(entry["per_draw"]) == 2
  assert report["suite"]["results"]["eot_pgd"]["eot_samples"] == 2  # noisy model
  assert [p["eps_255"] for p in report["suite"]["eps_sweep"]] == [0, 8, 64]
  assert len(report["sanity_checks"]) == 9
  per_example = np.load(out / "per_example.npz")
  assert per_example["pgd"].shape == (2, 40) and per_example["labels"].shape == (40,)
  assert not (out / "unfinished_attacks").exists()  # removed once written
  assert per_example["pgd"].mean() == pytest.approx(
      report["suite"]["results"]["pgd"]["mean"])
  assert report["model"]["sha256"] and report["provenance"]["git_commit"]
  assert (out / "accuracy_vs_eps.png").stat().st_size > 1000
  markdown = (out / "eval.md").read_text()
  assert "| PGD-2 |" in markdown and "Sanity checks" in markdown
  headline = dict(report["suite"]["results"]["robust_all"])
  assert headline["mean"] <= min(e["mean"] for n, e in report["suite"][
      "results"].items() if n in headline["attacks"])
  assert "| **Robust accuracy (all attacks)** |" in markdown
  # --rescore re-derives the headline from per_example.npz, attacking nothing,
  # and replaces the worst case that was the headline before it.
  report["suite"]["results"]["worst_case"] = dict(headline, mean=0.99)
  report["suite"]["results"]["robust_all"]["mean"] = 0.99
  (out / "eval.json").write_text(json.dumps(report))
  result = _evaluate("--rescore", f"--output_dir={out}", timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  again = json.loads((out / "eval.json").read_text())
  assert again["suite"]["results"]["robust_all"]["mean"] == headline["mean"]
  assert "worst_case" not in again["suite"]["results"]
  # The model card, beside eval.json, carries the re-derived headline.
  card = json.loads((out / "model_card.json").read_text())
  assert card["robust_accuracy_all_attacks"]["mean"] == headline["mean"]
  assert card["model"]["parameters"] == _cifar_sized_model().count_params()
  assert card["model"]["gzip_bytes"] < card["model"]["bytes"]
  assert card["randomized"] and card["threat_model"]["eps_255"] == 8
  assert [a["attack"] for a in card["attacks"]] == headline["attacks"][1:]
  assert "| **robust accuracy (all attacks)** | **" in (out / "MODEL_CARD.md").read_text()
  assert again["rescored"][0]["command"].endswith(f"--rescore --output_dir={out}")
  assert "re-derived from per_example.npz" in (out / "eval.md").read_text()
  assert _evaluate("--rescore", f"--output_dir={out}", timeout=120).returncode == 0
  assert len(json.loads((out / "eval.json").read_text())["rescored"]) == 1
  (out / "per_example.npz").unlink()
  result = _evaluate("--rescore", f"--output_dir={out}", timeout=120)
  assert result.returncode != 0 and "per_example.npz does not exist" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


def test_a_tflite_target_gets_clean_and_black_box_attacks_only(tmp_path):
  import export_helpers
  model = export_helpers.tiny_model(num_classes=10)
  path = tmp_path / "m.tflite"
  path.write_bytes(export_helpers.tflite_bytes(model))
  target = classifiers.load_classifier(str(path))
  assert not target.differentiable and target.num_classes == 10
  x, y = colour_data(8)
  x = np.asarray(tf.image.resize(x, (32, 32)))
  cfg = config_lib.EvalConfig(attacks=("clean", "pgd", "transfer"), noise_draws=2,
                              batch_size=8)
  suite = suite_lib.run_suite(target, x, y, cfg,
                               source=classifiers.from_keras(model))
  assert set(suite["results"]) == {"clean", "transfer", "robust_all"}
  assert "not differentiable" in suite["skipped"]["pgd"]


def test_the_headline_is_robust_only_if_every_attack_failed_in_the_pass(
    monkeypatch):
  # 4 passes, 3 examples. Example 0 falls to FGSM every time, example 2 to
  # PGD; example 1 falls to FGSM in passes 1-2 and to PGD in passes 1-3, and
  # is misclassified clean in pass 0. Robust in a pass: survives all three.
  planted = {"Clean": [[1, 0, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1]],
             "FGSM": [[0, 1, 1], [0, 0, 1], [0, 0, 1], [0, 1, 1]],
             "PGD-2": [[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]]}
  monkeypatch.setattr(suite_lib, "measure", lambda target, x, y, draws, label,
                      **kw: np.array(planted[label], bool))
  cfg = config_lib.EvalConfig(attacks=("clean", "fgsm", "pgd"), noise_draws=4,
                              steps=2, batch_size=4)
  x, y = colour_data(3)
  suite = suite_lib.run_suite(classifiers.from_keras(tiny_model()), x, y, cfg)
  headline = suite["results"]["robust_all"]
  assert headline["attacks"] == ["clean", "fgsm", "pgd"]
  assert headline["per_draw"] == [0.0, 0.0, 0.0, 0.0]
  planted["PGD-2"][3] = [1, 1, 0]  # now example 1 survives everything in pass 3
  suite = suite_lib.run_suite(classifiers.from_keras(tiny_model()), x, y, cfg)
  assert suite["results"]["robust_all"]["per_draw"] == [0, 0, 0, pytest.approx(1 / 3)]
  assert suite["results"]["fgsm"]["mean"] == pytest.approx(0.5)
  assert suite["per_example"]["pgd"].shape == (4, 3)



# Each sanity check, run for real: a planted defect (in the attack or in the
# model) makes it FAIL, and the honest twin PASSes. (check, attacks, defect):
# defect(monkeypatch, model) plants it and returns the model to evaluate.
def _attack_returns_x(name, when=lambda kw: True):
  """A broken attack: hands back its input unchanged when `when(kwargs)`."""
  def plant(monkeypatch, model):
    from rsr_tf import apgd as apgd_lib  # noqa: E402
    module = apgd_lib if name == "apgd" else attacks
    real = getattr(module, name)
    def broken(model_fn, x, y, *args, **kw):
      return x if when(kw) else real(model_fn, x, y, *args, **kw)
    monkeypatch.setattr(module, name, broken)
    return model
  return plant


def _moves_x_at_eps_zero(monkeypatch, model):
  real = attacks.pgd
  # Swaps colour channels whatever eps is, as a wrong projection might.
  monkeypatch.setattr(attacks, "pgd", lambda fn, x, y, **kw: tf.roll(
      real(fn, x, y, **kw), 1, axis=-1))
  return model


def _masked(monkeypatch, model):
  return _QuantisedInput(model)


SANITY_CASES = [
    ("eps = 0 reproduces clean accuracy", ("clean", "eps_sweep"),
     _moves_x_at_eps_zero),
    ("accuracy does not rise as eps grows", ("clean", "eps_sweep"),
     _attack_returns_x("pgd", lambda kw: kw["eps"] > 0.22)),
    ("PGD at the largest eps of the sweep brings accuracy to <= 5%",
     ("clean", "eps_sweep"), _masked),
    ("more PGD steps never help the model (PGD-strong <= PGD)",
     ("clean", "pgd", "pgd_strong"),
     _attack_returns_x("pgd", lambda kw: kw["steps"] > 10)),
    ("iterative beats single-step (PGD <= FGSM)", ("clean", "fgsm", "pgd"),
     _attack_returns_x("pgd")),
    ("black-box queries are weaker than white-box (Square >= PGD, same images)",
     ("clean", "pgd", "square"), _masked),
    ("EOT does not help the model (EOT-PGD <= PGD)", ("clean", "pgd", "eot_pgd"),
     _attack_returns_x("eot_pgd")),
    ("APGD with EOT is at least as strong as PGD (APGD-CE <= PGD)",
     ("clean", "pgd", "apgd_ce"), _attack_returns_x("apgd")),
]


@pytest.mark.parametrize("check, attack_set, defect", SANITY_CASES,
                         ids=[c[0].split(" (")[0] for c in SANITY_CASES])
def test_each_sanity_check_fails_on_a_planted_defect(deterministic, monkeypatch,
                                                     check, attack_set, defect):
  x, y = colour_data(32, seed=5)
  cfg = config_lib.EvalConfig(attacks=attack_set, eps=0.3, step_size=0.1,
                              steps=7, strong_steps=12, apgd_steps=5,
                              eot_samples=2, square_queries=300,
                              blackbox_limit=0, eps_sweep=(0.0, 0.2, 0.5),
                              noise_draws=1, batch_size=32)

  def status(model):
    result = suite_lib.run_suite(classifiers.from_keras(model, num_classes=3),
                                 x, y, cfg)
    return {c["check"]: c["status"] for c in sanity.sanity_checks(result)}[check]

  assert status(deterministic) == "PASS"
  with monkeypatch.context() as patch:
    assert status(defect(patch, deterministic)) == "FAIL"


def test_the_model_card_counts_skipped_checks_apart_and_gives_square_queries():
  from rsr_tf import model_card
  entry = {"mean": 0.2, "std": 0.0, "examples": 10, "draws": 1}
  report = {
      "suite": {"stochastic": False, "results": {
          "clean": dict(entry, mean=0.6),
          "square": dict(entry, kind="black-box (query)", queries=5000,
                         steps=None, restarts=None, eot_samples=1,
                         crafted="once"),
          "robust_all": dict(entry, attacks=["clean", "square"])}},
      "config": {"eps": 8 / 255, "noise_draws": 1},
      "model": {"path": "m.keras", "sha256": "0"},
      "data": {"source": "x", "eval_examples": 10},
      "sanity_checks": [{"check": "a", "status": "PASS"},
                        {"check": "b", "status": "SKIPPED"},
                        {"check": "c", "status": "SKIPPED"}],
      "provenance": {"command": "c", "git_commit": "g", "date": "d"}}
  text = model_card.markdown(model_card.card(report))
  assert "1 of 1 run passed, 2 skipped" in text
  assert "| square | black-box (query) | (5,000) |" in text
  report["sanity_checks"][1]["status"] = "FAIL"
  assert "1 of 2 run passed, 1 skipped" in model_card.markdown(
      model_card.card(report))
  assert "FAILED: b." in model_card.markdown(model_card.card(report))
  assert "accuracy alone" in text
  report["config"]["sequential"] = True  # AutoAttack's order: on survivors
  assert "accuracy after it and those above" in model_card.markdown(
      model_card.card(report))
