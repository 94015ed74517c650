"""The files an export writes, and any of them loaded as a function from images to logits.

Export writes these files; evaluation (`rsr_tf.classifiers`) and the export's
own verification load them back through `load_classifier`.
"""

import os

import rsr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf

from rsr_tf import config
from rsr_tf import litert
from rsr_tf import models

FORMATS = config.EXPORT_FORMATS
DEFAULT_FORMATS = config.DEFAULT_EXPORT_FORMATS
ARTIFACT_NAMES = {
    "saved_model": "saved_model",
    "tflite_float": "model_float.tflite",
    "tflite_dynamic": "model_dynamic.tflite",
    "tflite_int8": "model_int8.tflite",
    "tflite_int16x8": "model_int16x8.tflite",
}
# Formats with quantised weights: checked by top-1 agreement, not logits.
QUANTIZED = ("tflite_dynamic", "tflite_int8", "tflite_int16x8")
# Formats whose activation ranges are calibrated on representative images.
CALIBRATED = ("tflite_int8", "tflite_int16x8")
REPORT_NAME = "export.json"
LABELS_NAME = "labels.txt"
MODEL_FILE = "model.keras"  # the Keras model, when export is given an object
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
SIGNATURE_KEY = "serving_default"


class ExportError(Exception):
  """Export cannot proceed; the message is one line for the user."""


def image_shape(model):
  """(height, width, channels) of the images a Keras model takes."""
  return tuple(int(d) for d in model.input_shape[1:])


def load_classifier(path, batch_size=128, num_threads=None):
  """A function from float32 images [N, H, W, C] in [0, 1] to logits [N, classes].

  Args:
    path: a `.keras` model, a SavedModel folder written by `export`, or a
      `.tflite` file. The noise is whatever the artifact has: a noisy one
      draws fresh weight noise for every batch of `batch_size` images.
    batch_size: images per forward pass.
    num_threads: LiteRT threads for a `.tflite` file.

  Returns:
    A callable returning a float32 numpy array. A `.tflite` classifier also
    has an `op_resolver` attribute (which interpreter set-up ran it).

  Raises:
    ExportError: unknown kind of file, or one that cannot be loaded.
  """
  if not os.path.exists(path):
    raise ExportError(f"{path} does not exist")
  if os.path.isdir(path):
    return saved_model_classifier(path, batch_size)
  if path.endswith(".keras"):
    try:
      model = models.load(path)
    except (OSError, ValueError, TypeError) as e:
      raise ExportError(f"cannot load Keras model {path}: {e}") from e
    return batched(keras_fn(model), batch_size)
  if path.endswith(".tflite"):
    try:
      model = litert.Model(model_path=path, num_threads=num_threads)
    except (RuntimeError, ValueError) as e:
      raise ExportError(f"cannot load TFLite model {path}: "
                        f"{litert.first_line(e)}") from e

    def classify(images):
      return model.predict(np.asarray(images, np.float32), batch_size)

    classify.op_resolver = model.op_resolver
    classify.input_shape = model.input_shape
    return classify
  raise ExportError(f"{path}: expected a .keras file, a SavedModel folder or "
                    f"a .tflite file")


def saved_model_classifier(path, batch_size):
  """The serving signature of a SavedModel folder, batched.

  Raises:
    ExportError: the folder has no loadable `SIGNATURE_KEY` signature.
  """
  try:
    signature = tf.saved_model.load(path).signatures[SIGNATURE_KEY]
  except (OSError, KeyError, ValueError) as e:
    raise ExportError(f"cannot load SavedModel {path} with a "
                      f"{SIGNATURE_KEY!r} signature: {e}") from e
  (input_name,) = signature.structured_input_signature[1].keys()
  (output_name,) = signature.structured_outputs.keys()

  def one_batch(images):
    return signature(**{input_name: tf.constant(images)})[output_name].numpy()

  return batched(one_batch, batch_size)


def keras_fn(model):
  """model(x, training=False) as one traced function, for any batch size."""
  call = tf.function(lambda x: model(x, training=False), input_signature=[
      tf.TensorSpec((None,) + image_shape(model), tf.float32)])
  return lambda images: call(tf.constant(images)).numpy()


def batched(one_batch, batch_size):
  """`one_batch` applied `batch_size` images at a time, outputs concatenated."""
  def classify(images):
    images = np.asarray(images, np.float32)
    return np.concatenate([one_batch(images[i:i + batch_size])
                           for i in range(0, len(images), batch_size)])
  return classify
