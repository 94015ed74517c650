"""Bad inputs end in one clear line: odd images, broken folders, wrong model files."""

import os
import subprocess
import sys
import warnings

import numpy as np
from PIL import Image
import pytest

import rsr_tf  # noqa: F401
import tf_keras as keras

from rsr_tf import data
from rsr_tf import classifiers
from rsr_tf import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name),
                         *args], capture_output=True, text=True, timeout=120,
                        cwd=ROOT)


def _one_error_line(result, expected):
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  assert expected in lines[0] and "Traceback" not in result.stderr


def _save(path, pixels, mode):
  Image.fromarray(np.asarray(pixels, np.uint8), mode=mode).save(path)


def _rgb(size=(32, 32), colour=(200, 100, 50)):
  return np.broadcast_to(np.array(colour, np.uint8), (*size, 3))


def _folder(root, classes=("a", "b")):
  for split in ("train", "test"):
    for name in classes:
      (root / split / name).mkdir(parents=True)
      _save(root / split / name / "plain.png", _rgb(), "RGB")
  return root


# ---------------------------------------------------------------------------
# Images of other modes and sizes: converted as asked, and counted in the log.


def test_images_are_converted_to_rgb_and_resized_when_asked(tmp_path, capsys):
  root = _folder(tmp_path)
  train_a = root / "train" / "a"
  _save(train_a / "gray.png", np.full((32, 32), 77), "L")
  _save(train_a / "gray_alpha.png", np.stack(
      [np.full((32, 32), 90), np.zeros((32, 32))], -1), "LA")
  _save(train_a / "rgba.png", np.broadcast_to(
      np.array([10, 20, 30, 0], np.uint8), (32, 32, 4)), "RGBA")
  _save(root / "train" / "b" / "large.png", _rgb((96, 64), (5, 6, 7)), "RGB")

  with pytest.raises(data.DataError, match="large.png is 96x64 but .* is 32x32"
                     ".*--image_size") as info:
    data.load_image_folder(str(root))
  assert "\n" not in str(info.value)
  capsys.readouterr()
  dataset = data.load_image_folder(str(root), image_size=(32, 32))
  images = {name: image for name, image in zip(
      ["gray", "gray_alpha", "plain_a", "rgba", "large", "plain_b"],
      dataset.train.images[np.argsort(dataset.train.labels, kind="stable")])}
  assert dataset.train.images.shape == (6, 32, 32, 3)
  assert np.all(images["gray"] == 77), "grayscale copied into R, G and B"
  assert np.all(images["gray_alpha"] == 90)
  assert np.all(images["rgba"] == [10, 20, 30]), "alpha dropped"
  assert np.all(images["large"] == [5, 6, 7]), "resized to 32x32"
  err = capsys.readouterr().err
  assert "4 converted to 32x32x3" in err
  assert err.count(" converted to ") == 1, "the test split needed nothing"


# ---------------------------------------------------------------------------
# Broken folders: one line naming the place, non-zero exit.


@pytest.mark.parametrize("breakage,expected", [
    ("empty_class", "train/b has no images"),
    ("no_split_folders", "has no train/ subfolder"),
])
def test_a_broken_image_folder_stops_the_script_in_one_line(tmp_path, breakage,
                                                           expected):
  root = tmp_path / "images"
  if breakage == "empty_class":
    _folder(root)
    os.remove(root / "train" / "b" / "plain.png")
  else:  # class folders at the top, as some downloads unpack
    (root / "cat").mkdir(parents=True)
    _save(root / "cat" / "one.png", _rgb(), "RGB")
  result = _script("train.py", f"--image_folder={root}",
                   f"--output_dir={tmp_path / 'out'}")
  _one_error_line(result, expected)


# ---------------------------------------------------------------------------
# Model files of the wrong kind.


def _lambda_model():
  inputs = keras.Input((32, 32, 3))
  x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(10)(x))


def _mnist_model():
  inputs = keras.Input((28, 28, 1))
  return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))


def _feature_map_model():
  inputs = keras.Input((32, 32, 3))
  return keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))


@pytest.fixture(name="model_files", scope="module")
def _model_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("models")
  paths = {"lambda": folder / "lambda.keras", "mnist": folder / "mnist.keras",
           "feature_map": folder / "feature_map.keras",
           "h5": folder / "model.h5", "text": folder / "notes.keras",
           "tflite": folder / "junk.tflite"}
  _lambda_model().save(str(paths["lambda"]))
  _mnist_model().save(str(paths["mnist"]))
  _feature_map_model().save(str(paths["feature_map"]))
  with warnings.catch_warnings():  # HDF5 is legacy: the point here
    warnings.simplefilter("ignore", UserWarning)
    _mnist_model().save(str(paths["h5"]))
  paths["text"].write_text("a text file, not a model\n")
  paths["tflite"].write_text("not a flatbuffer\n")
  return {name: str(path) for name, path in paths.items()}


def test_safe_mode_refuses_a_lambda_layer(model_files):
  with pytest.raises(ValueError, match="Lambda"):
    models.load(model_files["lambda"])


def test_evaluation_takes_a_28x28_grayscale_model(model_files):
  classifier = classifiers.load_classifier(model_files["mnist"])
  assert classifier.input_shape == (28, 28, 1)


def test_images_are_converted_to_grayscale(tmp_path):
  root = _folder(tmp_path)
  _save(root / "train" / "a" / "colour.png", _rgb((32, 32), (200, 100, 50)),
        "RGB")
  dataset = data.load_image_folder(str(root), channels=1)
  assert dataset.train.images.shape[1:] == (32, 32, 1)
  colour = dataset.train.images[list(dataset.train.labels).index(0)]
  # ITU-R 601 luminance, as tf.image.rgb_to_grayscale and Pillow's "L".
  assert np.all(np.abs(colour.astype(int) - round(
      0.2989 * 200 + 0.587 * 100 + 0.114 * 50)) <= 1)


@pytest.mark.parametrize("kind,expected", [
    ("lambda", "refused by Keras safe mode"),
    ("feature_map", "is not an image classifier: it maps (None, 32, 32, 3) "
     "to (None, 30, 30, 4)"),
    ("h5", "unknown model format"),
    ("text", "is not a Keras model file"),
    ("tflite", "cannot load TFLite model"),
])
def test_evaluation_refuses_wrong_model_files_in_one_line(model_files, kind,
                                                          expected):
  with pytest.raises(ValueError) as info:
    classifiers.load_classifier(model_files[kind])
  message = str(info.value)
  assert expected in message and "\n" not in message


@pytest.mark.parametrize("script,kind,expected", [
    ("evaluate.py", "lambda", "refused by Keras safe mode"),
    ("export.py", "lambda", "refused by Keras safe mode"),
    ("export.py", "text", "is not a Keras model file"),
    ("export.py", "h5", "must be a .keras file"),
])
def test_scripts_refuse_wrong_model_files_in_one_line(model_files, tmp_path,
                                                      script, kind, expected):
  result = _script(script, f"--model={model_files[kind]}", "--embedded_sample",
                   f"--output_dir={tmp_path / 'out'}")
  _one_error_line(result, expected)
