"""What the evaluation scores: a model behind a logits function, loaded from any format."""

import dataclasses
import os
from typing import Callable, Optional

import rsr_tf  # noqa: F401
import numpy as np
import tensorflow as tf
import tf_keras as keras

from rsr_tf import attacks
from rsr_tf import convert


@dataclasses.dataclass
class Classifier:
  """What the evaluation needs to know about a model.

  Attributes:
    name: shown in reports (usually the path).
    logits_fn: images in [0, 1] -> logits. Stochastic models draw new noise
      on every call. For white-box attacks it must be a TensorFlow function
      of its input.
    differentiable: whether gradients of `logits_fn` can be taken.
    num_classes: width of the logits.
    input_shape: (height, width, channels) of the images it takes.
    model: the Keras model behind it, if it is one (for the model card).
  """
  name: str
  logits_fn: Callable
  differentiable: bool
  num_classes: int
  input_shape: tuple = ()
  model: Optional[keras.Model] = None


def from_keras(model, name=None, num_classes=None):
  """A Classifier over a Keras model in inference mode, noise on as deployed.

  `num_classes` defaults to the width of a functional model's output.

  Raises:
    ValueError: the model ends in a softmax (attacks need logits).
  """
  convert.require_logits(model, "evaluation")
  try:
    input_shape = tuple(int(d) for d in model.input_shape[1:])
  except (AttributeError, TypeError):  # subclassed, or a free dimension
    input_shape = ()
  return Classifier(name or model.name, attacks.inference_fn(model), True,
                    num_classes or int(model.output_shape[-1]), input_shape,
                    model)


def _saved_model_fn(path):
  """The serving signature of a SavedModel as a differentiable function."""
  loaded = tf.saved_model.load(path)
  if "serving_default" not in loaded.signatures:
    raise ValueError(f"SavedModel {path} has no serving_default signature")
  signature = loaded.signatures["serving_default"]
  (input_name,) = signature.structured_input_signature[1].keys()
  output_name = next(iter(signature.structured_outputs))

  def logits(x):
    return signature(**{input_name: tf.convert_to_tensor(x, tf.float32)})[output_name]

  logits.loaded = loaded  # keeps the variables alive
  return logits


def _check_classifier_shapes(model, path):
  """Refuses a Keras model that does not map images of one size to logits."""
  try:
    inputs, outputs = model.input_shape, model.output_shape
  except AttributeError:  # a subclassed model without a known input
    raise ValueError(f"{path} holds a model without a known input shape; "
                     "save a functional model") from None
  if (not isinstance(inputs, tuple) or len(inputs) != 4 or None in inputs[1:]
      or not isinstance(outputs, tuple) or len(outputs) != 2):
    raise ValueError(f"{path} is not an image classifier: it maps {inputs} to "
                     f"{outputs}; expected (None, H, W, C) images to "
                     "(None, classes) logits")


def load_classifier(path):
  """Loads a `.keras` file, a SavedModel directory or a `.tflite` file.

  Raises:
    ValueError: one line saying what `path` is and what was expected.
  """
  from rsr_tf import models  # noqa: E402
  if os.path.isdir(path):
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
      raise ValueError(f"{path} is a directory without saved_model.pb; expected a "
                       ".keras file, a SavedModel directory or a .tflite file")
    serve = _saved_model_fn(path)
    (spec,) = serve.loaded.signatures["serving_default"] \
        .structured_input_signature[1].values()
    shape = tuple(spec.shape[1:])
    if len(shape) != 3 or None in shape:
      raise ValueError(f"{path} is not an image classifier: its serving "
                       f"signature takes {list(spec.shape)}; expected "
                       "[N, H, W, C] images")
    try:
      probe = serve(tf.zeros((1,) + shape))
    except (TypeError, ValueError, tf.errors.OpError) as e:
      raise ValueError(f"{path} is not an image classifier: its serving "
                       f"signature fails on {list(shape)} images "
                       f"({type(e).__name__})") from e
    return Classifier(path, serve, True, int(probe.shape[-1]),
                      tuple(int(d) for d in shape))
  if not os.path.isfile(path):
    raise ValueError(f"model file {path} does not exist")
  if path.endswith(".keras"):
    model = models.load(path)  # ValueError: one line
    _check_classifier_shapes(model, path)
    try:
      return from_keras(model, name=path)
    except convert.ModelError as e:
      raise ValueError(str(e)) from None
  if path.endswith(".tflite"):
    from rsr_tf import artifacts  # noqa: E402  (heavy; only on use)
    try:
      predict = artifacts.load_classifier(path)
    except artifacts.ExportError as e:
      raise ValueError(str(e)) from e
    shape = tuple(predict.input_shape[1:])
    probe = predict(np.zeros((1,) + shape, np.float32))
    return Classifier(path, lambda x: tf.constant(predict(np.asarray(x, np.float32))),
                      False, int(probe.shape[-1]), shape)
  raise ValueError(f"{path}: unknown model format; expected a .keras file, a "
                   "SavedModel directory or a .tflite file")
