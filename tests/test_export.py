"""rsr_tf.export and scripts/export.py: every format round trip, parity, atomic output."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import export_helpers
import helpers
from rsr_tf import artifacts
from rsr_tf import conversion
from rsr_tf import exporter as export_lib
from rsr_tf import outputs
from rsr_tf import layers as rsr_layers
from rsr_tf import litert
from rsr_tf import pruning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "export.py")


def _config(**kwargs):
  return export_lib.ExportConfig(**{"noise_draws": 3, "latency_runs": 3,
                                    **kwargs})


def _data(dataset):
  """An rsr_tf.data.Dataset as export's keyword arguments."""
  return {"representative_data": dataset.train.images,
          "validation_data": (dataset.test.images, dataset.test.labels),
          "class_names": dataset.class_names, "data_source": dataset.source}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  keras.utils.set_random_seed(0)
  model = export_helpers.trained_pruned_model(sparsity=0.6)
  return export_helpers.save(model, tmp_path_factory.mktemp("model") /
                             "model.keras")


@pytest.fixture(scope="module")
def dataset():
  return export_helpers.colour_dataset()


@pytest.fixture(scope="module")
def noise_off(model_path, dataset, tmp_path_factory):
  out = tmp_path_factory.mktemp("off") / "export"
  report = export_lib.export(model_path, str(out), **_data(dataset),
                             config=_config(sparse=True, noise=False,
                                            formats=export_lib.FORMATS),
                             argv=["export.py", "--noise=off"])
  return out, report


@pytest.fixture(scope="module")
def noise_on(model_path, dataset, tmp_path_factory):
  out = tmp_path_factory.mktemp("on") / "export"
  report = export_lib.export(model_path, str(out), **_data(dataset),
                             config=_config(sparse=True, noise=True,
                                            formats=export_lib.FORMATS),
                             argv=["export.py"])
  return out, report


def test_noise_off_round_trip_passes_every_parity_check(noise_off, model_path):
  out, report = noise_off
  assert report["passed"], report["failed_checks"]
  assert report["noise"] == "off"
  arts = report["artifacts"]
  assert set(arts) == set(export_lib.FORMATS)
  for fmt in ("saved_model", "tflite_float"):
    assert arts[fmt]["max_abs_logit_diff"] <= 1e-4
  for fmt in ("tflite_dynamic", "tflite_int8", "tflite_int16x8"):
    assert arts[fmt]["top1_agreement"] >= 0.99
    assert "accuracy matches Keras" in {c["check"] for c in arts[fmt]["checks"]}
  for fmt, row in arts.items():
    assert (out / row["file"]).exists(), fmt
    assert row["bytes"] > 0 and 0 < row["gzip_bytes"]
    assert row["latency_ms"] > 0
    assert row["accuracy"]["mean"] == pytest.approx(1.0)
    assert {c["check"] for c in row["checks"]} >= {"deterministic"}
    assert all(c["passed"] for c in row["checks"])
  on_disk = json.loads((out / export_lib.REPORT_NAME).read_text())
  assert on_disk["passed"] and on_disk["written_to"] == str(out)
  assert on_disk["model"]["sha256"] == outputs.sha256_of(model_path)
  assert on_disk["provenance"]["command"] == "python export.py --noise=off"
  assert on_disk["data"]["source"] == "synthetic:colour"
  assert (out / "labels.txt").read_text().split() == ["colour0", "colour1",
                                                      "colour2"]
  leftovers = [n for n in os.listdir(out.parent) if n != "export"]
  assert not leftovers, leftovers


def test_sparsity_is_measured_on_each_artifact(noise_off, model_path):
  _, report = noise_off
  from rsr_tf import models
  keras_sparsity = pruning.measured_sparsity(models.load(model_path))["overall"]
  assert keras_sparsity == pytest.approx(0.6, abs=0.02)
  arts = report["artifacts"]
  # Float artifacts hold the same zeros (batch norm folding scales, never
  # fills, a zero); int8 rounding can only add zeros.
  for fmt in ("saved_model", "tflite_float"):
    assert arts[fmt]["sparsity"]["overall"] == pytest.approx(keras_sparsity)
  for fmt in ("tflite_dynamic", "tflite_int8", "tflite_int16x8"):
    assert arts[fmt]["sparsity"]["overall"] >= keras_sparsity - 1e-9
  # LiteRT runs sparse-encoded 16x8 models wrongly, so they stay dense.
  assert arts["tflite_int16x8"]["sparsity"]["sparse_encoded_tensors"] == 0
  assert any("tflite_int16x8: weights stored dense" in n for n in report["notes"])
  for fmt in ("tflite_dynamic", "tflite_int8"):
    assert arts[fmt]["sparsity"]["sparse_encoded_tensors"] >= 1
    # XNNPACK cannot prepare sparse weights: the fallback ran and says so.
    assert arts[fmt]["op_resolver"] == litert.FALLBACK_RESOLVER
    assert arts[fmt]["op_resolver_fallback_reason"]
  assert arts["tflite_int8"]["sparsity"]["per_tensor"][0]["dtype"] == "INT8"
  assert report["reference_dense_float_tflite"]["gzip_bytes"] > 0
  # The size target is against the unpruned reference (issue 17): the same
  # architecture, dense and unpruned, which gzip cannot shrink the way it
  # shrinks the pruned model's zeros.
  unpruned = report["reference_unpruned_float_tflite"]["gzip_bytes"]
  assert unpruned > 1.5 * report["reference_dense_float_tflite"]["gzip_bytes"]
  target = report["size_target"]
  assert target["gzip_ratio"] == pytest.approx(
      arts["tflite_int8"]["gzip_bytes"] / unpruned)
  assert target["target"] == 0.08 and target["noise"] == "off"
  assert target["met"] == (target["gzip_ratio"] <= 0.08)


def test_noise_on_round_trip_keeps_the_noise_and_the_accuracy(noise_on):
  out, report = noise_on
  assert report["passed"], report["failed_checks"]
  assert report["noise"] == "on"
  for fmt, row in report["artifacts"].items():
    checks = {c["check"]: c for c in row["checks"]}
    assert checks["noise present"]["passed"], fmt
    assert checks["accuracy matches Keras"]["passed"], fmt
    assert len(row["accuracy"]["per_draw"]) == 3
    if fmt.startswith("tflite"):
      assert row["ops"].get("RANDOM_STANDARD_NORMAL", 0) == 3, fmt
      # The kernels stay constants the converter encodes; only the noise
      # path has filters computed at run time.
      assert row["sparsity"]["dynamic_filters"] == 3
      assert row["sparsity"]["overall"] >= 0.58
  assert any("noise path" in note for note in report["notes"])
  assert "tflite_int8" in report["size_target"]["artifact"]
  assert report["size_target"]["target"] == 0.10


def test_noise_on_int8_holds_no_mask_constant(noise_on, model_path):
  from ai_edge_litert import schema_py_generated as schema
  from rsr_tf import models
  out, _ = noise_on
  model = litert.read_model((out / "model_int8.tflite").read_bytes())
  constants = [(t, model.buffers[t.buffer].data) for g in model.subgraphs
               for t in g.tensors if model.buffers[t.buffer].data is not None
               and len(model.buffers[t.buffer].data)]
  assert not [t.name for t, _ in constants if t.type == schema.TensorType.BOOL]
  # The noise path's one copy of the zero pattern: a 2-byte gap per kept
  # weight (its float constants are the alphas times std(w)).
  noise = [(t, d) for t, d in constants
           if rsr_layers.NOISE_SCOPE in (t.name.decode() if isinstance(
               t.name, bytes) else t.name) and t.type != schema.TensorType.FLOAT32
           and len(d) > 8]
  kept = sum(int(np.count_nonzero(layer.noisy_weight.numpy())) for layer in
             rsr_layers.noisy_layers(models.load(model_path)))
  assert {t.type for t, _ in noise} == {schema.TensorType.INT16}
  assert sum(len(d) for _, d in noise) == 2 * kept


def test_load_classifier_runs_every_kind_of_artifact(noise_off, model_path,
                                                     dataset):
  out, report = noise_off
  images = dataset.test.images[:20].astype(np.float32) / 255
  model = artifacts.load_classifier(model_path)
  with pytest.raises(AssertionError):  # the .keras file keeps its noise
    np.testing.assert_array_equal(model(images), model(images))
  saved = artifacts.load_classifier(str(out / "saved_model"))(images)
  tflite = artifacts.load_classifier(str(out / "model_float.tflite"),
                                     batch_size=7)(images)
  int8 = artifacts.load_classifier(str(out / "model_int8.tflite"))
  assert int8.op_resolver == litert.FALLBACK_RESOLVER
  assert saved.shape == tflite.shape == (20, 3)
  np.testing.assert_allclose(saved, tflite, atol=1e-4)
  np.testing.assert_array_equal(int8(images).argmax(-1), saved.argmax(-1))
  with pytest.raises(export_lib.ExportError, match="expected a .keras"):
    artifacts.load_classifier(str(out / "labels.txt"))


def test_a_failed_check_leaves_the_output_dir_untouched(model_path, dataset,
                                                        tmp_path, monkeypatch):
  out = tmp_path / "export"
  out.mkdir()
  (out / export_lib.REPORT_NAME).write_text('{"old": true}')
  real_predict = litert.Model.predict
  monkeypatch.setattr(litert.Model, "predict",
                      lambda self, x, b=128: real_predict(self, x, b) + 1.0)
  report = export_lib.export(model_path, str(out), **_data(dataset),
                             config=_config(formats=("tflite_float",), noise=False))
  assert not report["passed"]
  assert [c["check"] for c in report["failed_checks"]] == ["max |logit diff|"]
  assert os.listdir(out) == [export_lib.REPORT_NAME]
  assert json.loads((out / export_lib.REPORT_NAME).read_text()) == {"old": True}
  failed = tmp_path / "export.failed"
  kept = json.loads((failed / export_lib.REPORT_NAME).read_text())
  assert not kept["passed"] and kept["failed_checks"]
  assert sorted(os.listdir(tmp_path)) == ["export", "export.failed"]


def test_refuses_to_replace_a_folder_that_is_not_an_export(model_path, dataset,
                                                           tmp_path):
  out = tmp_path / "precious"
  out.mkdir()
  (out / "notes.txt").write_text("keep me")
  with pytest.raises(export_lib.ExportError, match="refusing to replace"):
    export_lib.export(model_path, str(out), **_data(dataset), config=_config())
  assert os.listdir(out) == ["notes.txt"]


def test_rejects_data_of_another_shape_than_the_model(dataset, tmp_path):
  path = export_helpers.save(
      keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                        keras.layers.Dense(3)]), tmp_path / "small.keras")
  with pytest.raises(export_lib.ExportError, match=r"representative_data has shape "
                     r"\[96, 32, 32, 3\]; the model takes \[N, 8, 8, 3\]"):
    export_lib.export(path, str(tmp_path / "out"), **_data(dataset), config=_config())


def test_bad_settings_name_the_flag():
  with pytest.raises(export_lib.ExportError, match="--formats"):
    _config(formats=("onnx",)).validate()
  with pytest.raises(export_lib.ExportError, match="--noise_draws"):
    _config(noise_draws=1).validate()
  with pytest.raises(export_lib.ExportError, match="--min_agreement"):
    _config(min_agreement=1.5).validate()


def test_split_noise_path_matches_the_noisy_kernel_in_distribution():
  layer = rsr_layers.NoisyDense(64, noise="channel", alpha_init=0.5,
                                use_bias=False)
  layer.build((None, 32))
  kernel = np.random.default_rng(0).normal(0, 0.1, (32, 64)).astype(np.float32)
  kernel[:, :8] = 0.0  # fully pruned outputs
  layer.kernel.assign(kernel)
  x = tf.constant(np.random.default_rng(1).uniform(0, 1, (4, 32)), tf.float32)
  clean = (x @ kernel).numpy()

  def draws(split):
    layer.noise_split = split
    fn = tf.function(lambda: layer(x))
    return np.stack([fn().numpy() for _ in range(300)])

  fused, split = draws(False), draws(True)
  assert "noise_split" not in layer.get_config()
  # Pruned weights get no noise either way.
  np.testing.assert_array_equal(split[:, :, :8], 0.0)
  np.testing.assert_allclose(split.mean(0), clean, atol=0.03)
  np.testing.assert_allclose(fused.mean(0), clean, atol=0.03)
  np.testing.assert_allclose(split.std(0)[:, 8:].mean(),
                             fused.std(0)[:, 8:].mean(), rtol=0.05)
  layer.noise_enabled = False
  np.testing.assert_array_equal(layer(x).numpy(), clean)


@pytest.mark.parametrize("fmt", ["tflite_float", "tflite_dynamic"])
def test_exported_noise_keeps_its_distribution(fmt):
  # 64 x 48 weights: above the converter's 1,024 for dynamic-range weights.
  inputs, units = 64, 48
  layer = rsr_layers.NoisyDense(units, noise="channel", use_bias=False)
  model = keras.Sequential([keras.Input((inputs,)), layer])
  rng = np.random.default_rng(0)
  kernel = rng.normal(0, 0.1, (inputs, units)) * (
      rng.uniform(size=(inputs, units)) < 0.3)
  kernel[:, 0] = 0.0
  layer.kernel.assign(kernel.astype(np.float32))
  layer.alpha.assign(np.linspace(0.2, 0.8, units).astype(np.float32))
  kept = kernel != 0
  content = conversion.convert_tflite(model, fmt, sparse=False,
                                      representative=None, noisy=True)[0]
  # One normal per kept weight is drawn, not one per weight.
  assert litert.random_draws(content) == kept.sum()
  interpreter = litert.Model(model_content=content)
  # The identity batch reads the noisy kernel row by row: one draw per invoke.
  eye = np.eye(inputs, dtype=np.float32)
  draws = np.stack([interpreter(eye) for _ in range(150)])
  np.testing.assert_array_equal(draws[:, ~kept], 0.0)
  scale = layer.alpha.numpy() * kernel.astype(np.float32).std()
  # Centred on each weight's mean over the draws, which absorbs int8 weight
  # rounding; sqrt(n / (n - 1)) restores the variance the centring removes.
  centred = (draws - draws.mean(0)) * np.sqrt(len(draws) / (len(draws) - 1))
  z = (centred / scale)[:, kept]
  bound = helpers.normal_ks_bound(z.size)
  assert helpers.normal_ks_distance(z) < bound
  assert helpers.normal_ks_distance(1.1 * z) > bound


def _run(*args, timeout=120):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("args,expected", [
    ([], "--model"),
    (["--model=/nonexistent.keras", "--output_dir=/tmp/x"], "/nonexistent.keras"),
    (["--model={model}", "--output_dir=/tmp/x", "--formats=onnx"], "--formats"),
    (["--model={model}", "--output_dir=/tmp/x", "--noise=maybe"], "--noise"),
    (["--model={model}", "--output_dir=/tmp/x", "--image_folder=/nonexistent"],
     "/nonexistent"),
])
def test_script_bad_flags_give_one_clear_line(args, expected, model_path):
  result = _run(*[a.format(model=model_path) for a in args])
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert expected in lines[0] and "Traceback" not in result.stderr


def test_script_writes_the_report_and_prints_the_table(tmp_path):
  # Untrained, so accuracy means nothing here; float parity still must hold.
  model_path = export_helpers.save(export_helpers.tiny_model(num_classes=10),
                                   tmp_path / "ten.keras")
  out = tmp_path / "export"
  result = _run(f"--model={model_path}", f"--output_dir={out}",
                "--formats=tflite_float", "--noise=off", "--embedded_sample",
                "--train_limit=10", "--eval_limit=20", "--latency_runs=2")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "tflite_float" in result.stdout and "max |logit diff|" in result.stdout
  report = json.loads((out / "export.json").read_text())
  assert report["passed"] and report["data"]["eval_examples"] == 20
  assert report["data"]["source"] == "embedded:cifar10_sample"
  assert sorted(os.listdir(out)) == ["export.json", "labels.txt",
                                     "model_float.tflite"]


def test_rejects_data_with_another_number_of_classes(model_path, tmp_path):
  ten = export_helpers.colour_dataset()
  ten = ten.__class__(train=ten.train, test=ten.test,
                      class_names=tuple(map(str, range(10))), source="ten")
  with pytest.raises(export_lib.ExportError, match="3 classes"):
    export_lib.export(model_path, str(tmp_path / "out"), **_data(ten), config=_config())


def test_a_passing_export_replaces_an_earlier_one(model_path, dataset,
                                                  tmp_path):
  out = tmp_path / "export"
  config = _config(formats=("tflite_float",), noise=False)
  first = export_lib.export(model_path, str(out), **_data(dataset), config=config)
  (out / "stale.txt").write_text("from the first export")
  second = export_lib.export(model_path, str(out), **_data(dataset), config=config)
  assert first["passed"] and second["passed"]
  assert sorted(os.listdir(out)) == ["export.json", "labels.txt",
                                     "model_float.tflite"]
  assert os.listdir(tmp_path) == ["export"]


def _verify_planted(flips, **config):
  """verify() of an int8 stand-in that changes the Keras prediction on `flips`.

  Keras is right on 800 of 1,000 images; flips maps "right" (Keras right,
  artifact wrong) and "wrong" (Keras wrong, artifact right) to image counts.
  """
  from rsr_tf import verification
  n, classes = 1000, 10
  labels = np.arange(n) % classes
  keras_pred = labels.copy()
  keras_pred[800:] = (labels[800:] + 1) % classes
  pred = keras_pred.copy()
  pred[:flips.get("right", 0)] = (labels[:flips.get("right", 0)] + 2) % classes
  pred[800:800 + flips.get("wrong", 0)] = labels[800:800 + flips.get("wrong", 0)]
  logits = np.eye(classes, dtype=np.float32)
  reference = {"logits": logits[keras_pred],
               "accuracy": {"mean": 0.8, "std": 0.0, "per_draw": [0.8]}}
  _, checks = verification.verify(
      "tflite_int8", lambda x: logits[pred[:len(x)]], reference,
      np.zeros((n, 1)), labels, _config(**config), noisy=False)
  return {c["check"]: c["passed"] for c in checks}


def test_quantised_files_are_gated_on_paired_accuracy_parity_not_agreement():
  # 5% of predictions change, as many to right as to wrong: 95% agreement,
  # the same accuracy. Issue 17's gate passes it; agreement is only reported.
  balanced = _verify_planted({"right": 25, "wrong": 25})
  assert balanced == {"deterministic": True, "accuracy matches Keras": True}
  # The same 50 changes all from right to wrong: 5 points lost, far beyond
  # the paired error (about 0.7 points).
  assert not _verify_planted({"right": 50})["accuracy matches Keras"]
  # Nothing changed: the gap is 0 and passes by the one-image margin.
  assert _verify_planted({})["accuracy matches Keras"]
  # A user who needs agreement still gets that gate.
  gated = _verify_planted({"right": 25, "wrong": 25}, min_agreement=0.99)
  assert gated["accuracy matches Keras"] and not gated["top-1 agreement"]
