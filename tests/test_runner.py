"""export/runner.py: classifies without TensorFlow, and fails cleanly on bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tf_keras as keras
from PIL import Image

import export_helpers
from export import runner
from rsr_tf import artifacts
from rsr_tf import conversion
from rsr_tf import layers as rsr_layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "export", "runner.py")

# Run in a fresh interpreter where importing TensorFlow is impossible, as on a
# device that only has numpy, Pillow and ai-edge-litert.
_NO_TENSORFLOW = """
import importlib.abc, json, sys
class _Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('tensorflow', 'tf_keras', 'keras'):
      raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, _Block())
sys.path.insert(0, {root!r})
from export.runner import classify, Classifier
import rsr_tf.latency, rsr_tf.litert  # the measuring helpers need no TensorFlow either
labels, probabilities = classify({model!r}, {images!r})
resolver = Classifier({model!r}).op_resolver
assert 'tensorflow' not in sys.modules, 'tensorflow was imported'
print(json.dumps({{'labels': labels.tolist(),
                  'probabilities': probabilities.tolist(),
                  'resolver': resolver}}))
"""


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
  keras.utils.set_random_seed(0)
  model = export_helpers.trained_pruned_model(sparsity=0.6, epochs=2)
  rsr_layers.set_noise_enabled(model, False)
  folder = tmp_path_factory.mktemp("tflite")
  (folder / "dense.tflite").write_bytes(export_helpers.tflite_bytes(model))
  (folder / "sparse.tflite").write_bytes(
      export_helpers.tflite_bytes(model, sparse=True))
  representative = export_helpers.colour_split(32, seed=3).images.astype(
      np.float32) / 255
  (folder / "int16x8.tflite").write_bytes(conversion.convert_tflite(
      model, "tflite_int16x8", sparse=False, representative=representative,
      noisy=False)[0])
  (folder / "labels.txt").write_text("red\ngreen\nblue\n")
  return folder


@pytest.fixture(scope="module")
def images():
  split = export_helpers.colour_split(12, seed=5)
  return split.images.astype(np.float32) / 255, split.labels


def _no_tensorflow(model, images_arg):
  code = _NO_TENSORFLOW.format(root=ROOT, model=str(model), images=images_arg)
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["dense", "sparse", "int16x8"])
def test_classifies_a_npy_batch_without_tensorflow(models_dir, images, name,
                                                   tmp_path):
  batch, labels = images
  np.save(tmp_path / "batch.npy", batch)
  out = _no_tensorflow(models_dir / f"{name}.tflite", str(tmp_path / "batch.npy"))
  expected = artifacts.load_classifier(str(models_dir / f"{name}.tflite"))(batch)
  np.testing.assert_allclose(out["probabilities"], runner.softmax(expected),
                             atol=1e-5)
  assert out["labels"] == expected.argmax(-1).tolist() == labels.tolist()
  assert out["resolver"] == ("BUILTIN_WITHOUT_DEFAULT_DELEGATES"
                             if name == "sparse" else "AUTO")


def test_classifies_image_files_of_any_size_and_mode(models_dir, images,
                                                     tmp_path):
  batch, labels = images
  paths = []
  for i, image in enumerate(batch[:3]):
    pixels = np.round(image * 255).astype(np.uint8)
    path = tmp_path / f"img{i}.png"
    if i == 1:  # RGBA, bigger: converted and resized
      Image.fromarray(pixels).convert("RGBA").resize((64, 64)).save(path)
    else:
      Image.fromarray(pixels).save(path)
    paths.append(str(path))
  out = _no_tensorflow(models_dir / "dense.tflite", paths)
  assert out["labels"] == labels[:3].tolist()

  result = subprocess.run([sys.executable, RUNNER,
                           str(models_dir / "dense.tflite"), *paths],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
  names = ["red", "green", "blue"]  # labels.txt beside the model
  assert [(p, names[l]) for p, l in zip(paths, labels[:3])] == [
      (line[0], line[1]) for line in lines]
  assert all(0 < float(line[2]) <= 1 for line in lines)


def test_a_corrupt_model_gives_a_clean_error(tmp_path, images):
  bad = tmp_path / "corrupt.tflite"
  bad.write_bytes(b"TFL3" + os.urandom(300))
  with pytest.raises(runner.RunnerError, match="not a usable .tflite model"):
    runner.classify(str(bad), images[0])
  with pytest.raises(runner.RunnerError, match="does not exist"):
    runner.classify(str(tmp_path / "missing.tflite"), images[0])
  np.save(tmp_path / "batch.npy", images[0])
  result = subprocess.run([sys.executable, RUNNER, str(bad),
                           str(tmp_path / "batch.npy")],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      result.stderr.strip()], result.stderr
  assert "runner.py: error:" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("make,message", [
    (lambda x: x[:, :28, :28], r"shape \[N, 32, 32, 3\], got \[4, 28, 28, 3\]"),
    (lambda x: x[0], r"shape \[N, 32, 32, 3\], got \[32, 32, 3\]"),
    (lambda x: x.astype(np.float64), "float32 in \\[0, 1\\], got float64"),
    (lambda x: x * 255, "must lie in \\[0, 1\\]"),
    (lambda x: np.where(x > 0.5, np.nan, x).astype(np.float32), "NaN"),
    (lambda x: x[:0], "empty batch"),
])
def test_bad_input_gives_a_clear_error(models_dir, images, make, message):
  classifier = runner.Classifier(str(models_dir / "dense.tflite"))
  with pytest.raises(runner.RunnerError, match=message):
    classifier(make(images[0][:4]))


def test_cli_rejects_wrong_shape_in_one_line(models_dir, images, tmp_path):
  np.save(tmp_path / "wrong.npy", images[0][:, :16])
  result = subprocess.run([sys.executable, RUNNER,
                           str(models_dir / "dense.tflite"),
                           str(tmp_path / "wrong.npy")],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr.strip() == ("runner.py: error: images must have shape "
                                   "[N, 32, 32, 3], got [12, 16, 32, 3]")


def test_demo_deploy_classifies_held_out_images_and_times_the_runner(
    models_dir, tmp_path):
  # The last step of `make demo`, on the tiny model: PNGs written, the
  # runner's lines passed through, then size and latency.
  image_dir = tmp_path / "images"
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "demo_deploy.py"),
       f"--tflite={models_dir / 'dense.tflite'}", f"--image_dir={image_dir}",
       "--count=3", "--latency_runs=2"],
      capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(os.listdir(image_dir)) == [
      "00_airplane.png", "01_automobile.png", "02_bird.png"]
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith("$ python export/runner.py")
  assert [line.split("\t")[0] for line in lines[1:4]] == [
      str(image_dir / name) for name in sorted(os.listdir(image_dir))]
  assert lines[4] == (f"deployed: {models_dir / 'dense.tflite'}, "
                      f"{(models_dir / 'dense.tflite').stat().st_size / 1024:.1f} KiB")
  assert lines[5].startswith("runner: 0 of 3 held-out images right")
  assert "ms per image (median of 2 batch-1 invokes, 1 thread, AUTO)" in lines[5]
