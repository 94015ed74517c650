"""SavedModel and TFLite export of a noisy, pruned model, verified against Keras.

`export` converts, measures and checks every artifact, then moves the whole
output folder into place in one rename; it returns the report that it also
writes as `export.json`. `load_classifier` runs any artifact (or the `.keras`
model) as a function from [0, 1] images to logits.
"""

import dataclasses
import gzip
import os
import shutil
import sys
import tempfile
import time

import rsr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tf_keras

from rsr_tf import convert
from rsr_tf import layers as rsr_layers
from rsr_tf import litert
from rsr_tf import models
from rsr_tf import outputs
from rsr_tf import pruning
from rsr_tf import scoring

FORMATS = ("saved_model", "tflite_float", "tflite_dynamic", "tflite_int8")
ARTIFACT_NAMES = {
    "saved_model": "saved_model",
    "tflite_float": "model_float.tflite",
    "tflite_dynamic": "model_dynamic.tflite",
    "tflite_int8": "model_int8.tflite",
}
REPORT_NAME = "export.json"
LABELS_NAME = "labels.txt"
MODEL_FILE = "model.keras"  # the Keras model, when export is given an object
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
SIGNATURE_KEY = "serving_default"
# The done-when target of the sparse int8 file against the dense float one.
SIZE_TARGET = 0.3
_QUANTIZED = ("tflite_dynamic", "tflite_int8")


class ExportError(Exception):
  """Export cannot proceed; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """What to export and how hard to check it.

  Attributes:
    formats: a subset of `FORMATS`.
    sparse: add `tf.lite.Optimize.EXPERIMENTAL_SPARSITY` to every TFLite file.
    noise: keep the PNI weight noise (the default: robustness needs it);
      False gives a deterministic, bit-stable model.
    noise_draws: passes over the evaluation images per accuracy when the
      noise is on.
    batch_size: images per invoke in verification (one noise draw each).
    latency_runs: batch-1 invokes whose median is the latency.
    num_threads: LiteRT interpreter threads for verification and latency.
    float_tolerance: max |logit difference| allowed for float artifacts.
    min_agreement: top-1 agreement with Keras required of quantised ones.
  """
  formats: tuple = FORMATS
  sparse: bool = False
  noise: bool = True
  noise_draws: int = 5
  batch_size: int = 128
  latency_runs: int = 50
  num_threads: int = 1
  float_tolerance: float = 1e-4
  min_agreement: float = 0.99

  def validate(self):
    """Raises ExportError naming the first setting that breaks a rule."""
    unknown = [f for f in self.formats if f not in FORMATS]
    if unknown or not self.formats:
      raise ExportError(f"--formats must be a non-empty subset of "
                        f"{','.join(FORMATS)}, got {','.join(self.formats)}")
    for name in ("noise_draws", "batch_size", "latency_runs", "num_threads"):
      if getattr(self, name) < 1:
        raise ExportError(f"--{name} must be >= 1, got {getattr(self, name)}")
    if self.noise and self.noise_draws < 2:
      raise ExportError(f"--noise_draws must be >= 2 with the noise on (a "
                        f"spread needs two draws), got {self.noise_draws}")
    if not self.float_tolerance >= 0:
      raise ExportError(f"--float_tolerance must be >= 0, got "
                        f"{self.float_tolerance}")
    if not 0 <= self.min_agreement <= 1:
      raise ExportError(f"--min_agreement must be in [0, 1], got "
                        f"{self.min_agreement}")
    return self


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
    return _saved_model_classifier(path, batch_size)
  if path.endswith(".keras"):
    try:
      model = models.load(path)
    except (OSError, ValueError, TypeError) as e:
      raise ExportError(f"cannot load Keras model {path}: {e}") from e
    return _batched(_keras_fn(model), batch_size)
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


def _saved_model_classifier(path, batch_size):
  try:
    signature = tf.saved_model.load(path).signatures[SIGNATURE_KEY]
  except (OSError, KeyError, ValueError) as e:
    raise ExportError(f"cannot load SavedModel {path} with a "
                      f"{SIGNATURE_KEY!r} signature: {e}") from e
  (input_name,) = signature.structured_input_signature[1].keys()
  (output_name,) = signature.structured_outputs.keys()

  def one_batch(images):
    return signature(**{input_name: tf.constant(images)})[output_name].numpy()

  return _batched(one_batch, batch_size)


def _keras_fn(model):
  """model(x, training=False) as one traced function, for any batch size."""
  call = tf.function(lambda x: model(x, training=False), input_signature=[
      tf.TensorSpec((None,) + _image_shape(model), tf.float32)])
  return lambda images: call(tf.constant(images)).numpy()


def _batched(one_batch, batch_size):
  def classify(images):
    images = np.asarray(images, np.float32)
    return np.concatenate([one_batch(images[i:i + batch_size])
                           for i in range(0, len(images), batch_size)])
  return classify


# ---------------------------------------------------------------------------
# Conversion.


def _image_shape(model):
  return tuple(int(d) for d in model.input_shape[1:])


def _serving_function(model):
  """The serving signature: float32 images [N, H, W, C] -> {"logits"}."""
  @tf.function(input_signature=[
      tf.TensorSpec((None,) + _image_shape(model), tf.float32,
                    name=INPUT_NAME)])
  def serve(image):
    return {OUTPUT_NAME: model(image, training=False)}
  return serve


def _trackable(model, serve):
  """A tf.Module holding the model's variables, kernels under their layer names.

  Saving this instead of the Keras model keeps Keras' own serialisation out
  of the SavedModel, and the named kernels let the artifact's sparsity be
  read back from its checkpoint.
  """
  module = tf.Module()
  module.kernels = pruning.kernels(model)
  kernel_ids = {id(v) for v in module.kernels.values()}
  module.other_variables = [v for v in model.variables
                            if id(v) not in kernel_ids]
  module.serve = serve
  return module


def _write_saved_model(model, path):
  serve = _serving_function(model)
  module = _trackable(model, serve)
  tf.saved_model.save(module, path, signatures={
      SIGNATURE_KEY: serve.get_concrete_function()})


def _converter(model):
  serve = _serving_function(model)
  return tf.lite.TFLiteConverter.from_concrete_functions(
      [serve.get_concrete_function()], _trackable(model, serve))


def _noise_nodes(content):
  """Output names of the ops in the PNI noise path of a TFLite model."""
  model = litert.read_model(content)
  names = set()
  for graph in model.subgraphs:
    for op in graph.operators or []:
      for out in op.outputs:
        name = graph.tensors[out].name
        name = name.decode() if isinstance(name, bytes) else name
        if rsr_layers.NOISE_SCOPE in name:
          names.add(name)
  return sorted(names)


def _convert_tflite(model, fmt, sparse, representative, noisy):
  """Returns (bytes, notes) of one TFLite format of `model`.

  With the noise on, each noisy layer is traced as conv(x, w) + conv(x,
  noise), so `w` stays a constant the converter can quantise and
  sparse-encode.

  Raises:
    ExportError: the converter failed.
  """
  rsr_layers.set_noise_split(model, noisy)
  try:
    return _convert_tflite_split(model, fmt, sparse, representative)
  except Exception as e:  # the converter's own error types are private
    raise ExportError(f"{fmt}: conversion failed: "
                      f"{litert.first_line(e)}") from e
  finally:
    rsr_layers.set_noise_split(model, False)


def _convert_tflite_split(model, fmt, sparse, representative):
  converter = _converter(model)
  notes = []
  if fmt != "tflite_int8":
    converter.optimizations = (
        ([tf.lite.Optimize.DEFAULT] if fmt in _QUANTIZED else []) +
        ([tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []))
    return converter.convert(), notes
  # Sparse encoding comes last, after quantisation (below), as in the
  # converter's own int8 path.
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: ([x[None]] for x in representative)
  # The noise path's filter is computed at run time; int8 convolution needs a
  # constant, symmetric filter and refuses it. So with the noise on, the model
  # is calibrated, then quantised with the noise path left in float, as
  # tf.lite.experimental.QuantizationDebugger does for denylisted nodes.
  converter._experimental_calibrate_only = True  # pylint: disable=protected-access
  calibrated = converter.convert()
  denylist = _noise_nodes(calibrated)
  from tensorflow.lite.python import convert as tflite_convert  # pylint: disable=g-import-not-at-top
  quantized = tflite_convert.mlir_quantize(
      calibrated, denylisted_nodes=denylist or None)
  if denylist:
    notes.append(f"int8 weights and activations; the PNI noise path "
                 f"({len(denylist)} ops) runs in float")
  if sparse:
    quantized = tflite_convert.mlir_sparsify(quantized)
  return quantized, notes


# ---------------------------------------------------------------------------
# Measurement.


def _sizes(path):
  """(bytes, gzip bytes) of a file, or summed over a folder's files."""
  files = [path]
  if os.path.isdir(path):
    files = [os.path.join(root, name) for root, _, names in os.walk(path)
             for name in names]
  size = packed = 0
  for name in files:
    with open(name, "rb") as f:
      data = f.read()
    size += len(data)
    packed += len(gzip.compress(data, compresslevel=9, mtime=0))
  return size, packed


def _saved_model_sparsity(path):
  """Zeros in the kernels stored in a SavedModel's checkpoint."""
  reader = tf.train.load_checkpoint(os.path.join(path, "variables",
                                                 "variables"))
  zeros = total = 0
  per_tensor = []
  for key in sorted(reader.get_variable_to_shape_map()):
    if not key.startswith("kernels/"):
      continue
    values = reader.get_tensor(key)
    layer_zeros = int(np.count_nonzero(values == 0))
    zeros += layer_zeros
    total += values.size
    per_tensor.append({"name": key.split("/")[1], "shape": list(values.shape),
                       "dtype": str(values.dtype),
                       "sparsity": layer_zeros / max(values.size, 1),
                       "sparse_encoded": False})
  return {"overall": zeros / max(total, 1), "zeros": zeros, "weights": total,
          "per_tensor": per_tensor}


def _accuracy(logits, labels):
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _accuracy_over_draws(classify, images, labels, draws):
  per_draw = [_accuracy(classify(images), labels) for _ in range(draws)]
  return {"mean": float(np.mean(per_draw)), "std": float(np.std(per_draw)),
          "per_draw": per_draw}


def _noise_present(classify, images):
  """Whether two passes over the same images give different logits."""
  return bool(np.any(classify(images) != classify(images)))


def _check(name, value, limit, passed, rule):
  return {"check": name, "value": value, "limit": limit,
          "passed": bool(passed), "rule": rule}


def _verify(fmt, classify, reference, images, labels, config, noisy,
            logit_step=None):
  """Parity of one artifact with the Keras model; returns (results, checks).

  `logit_step` (int8 output resolution) adds a diagnostic: the share of
  images whose Keras top-1/top-2 logit margin is below one step, which
  rounding the logits alone can flip.
  """
  probe = images[:min(len(images), 16)]
  checks = []
  present = _noise_present(classify, probe)
  if noisy:
    checks.append(_check("noise present", present, True, present,
                         "two invokes on the same images differ"))
    acc = _accuracy_over_draws(classify, images, labels, config.noise_draws)
    ref = reference["accuracy"]
    n = len(labels)
    tolerance = scoring.tolerance({**acc, "examples": n}, {**ref, "examples": n})
    gap = abs(acc["mean"] - ref["mean"])
    checks.append(_check(
        "accuracy matches Keras", gap, tolerance, gap <= tolerance,
        "|mean - Keras mean| <= 2 * sqrt(std^2 + Keras std^2) + one image "
        "(scoring.tolerance)"))
    return {"accuracy": acc}, checks
  checks.append(_check("deterministic", not present, True, not present,
                       "two invokes on the same images agree exactly"))
  logits = classify(images)
  diff = float(np.max(np.abs(logits - reference["logits"])))
  agreement = float(np.mean(np.argmax(logits, -1) ==
                            np.argmax(reference["logits"], -1)))
  if fmt in _QUANTIZED:
    checks.append(_check("top-1 agreement", agreement, config.min_agreement,
                         agreement >= config.min_agreement,
                         "share of images with Keras' top-1 class"))
  else:
    checks.append(_check("max |logit diff|", diff, config.float_tolerance,
                         diff <= config.float_tolerance,
                         "largest absolute logit difference from Keras"))
  results = {"accuracy": {"mean": _accuracy(logits, labels), "std": 0.0,
                          "per_draw": [_accuracy(logits, labels)]},
             "max_abs_logit_diff": diff, "top1_agreement": agreement}
  if logit_step:
    top2 = np.sort(reference["logits"], axis=-1)[:, -2:]
    results["logit_step"] = logit_step
    results["keras_margin_below_logit_step"] = float(
        np.mean(top2[:, 1] - top2[:, 0] < logit_step))
  return results, checks


def _saved_model_artifact(model, path, config, one_image):
  """Writes and measures the SavedModel; returns (row, classify)."""
  try:
    _write_saved_model(model, path)
  except (ValueError, TypeError, tf.errors.OpError) as e:
    raise ExportError(f"saved_model: cannot save: "
                      f"{litert.first_line(e)}") from e
  serve = tf.saved_model.load(path).signatures[SIGNATURE_KEY]
  row = {
      "file": os.path.basename(path), "runtime": "TensorFlow",
      "sparsity": _saved_model_sparsity(path),
      "latency_ms": litert.median_latency_ms(
          lambda x: serve(**{INPUT_NAME: tf.constant(x)}), one_image,
          config.latency_runs),
      "signature": {"key": SIGNATURE_KEY, "input": INPUT_NAME,
                    "output": OUTPUT_NAME,
                    "input_spec": ["N", *_image_shape(model),
                                   "float32 in [0, 1]"]},
  }
  return row, _saved_model_classifier(path, config.batch_size)


def _tflite_artifact(model, fmt, path, config, noisy, representative,
                     one_image):
  """Converts, writes and measures one TFLite file; returns (row, classify, notes)."""
  content, notes = _convert_tflite(model, fmt, config.sparse, representative,
                                   noisy)
  with open(path, "wb") as f:
    f.write(content)
  try:
    runner = litert.Model(model_path=path, num_threads=config.num_threads)
    latency_model = litert.Model(model_path=path,
                                 num_threads=config.num_threads)
  except (RuntimeError, ValueError) as e:
    raise ExportError(f"{fmt}: LiteRT cannot run the converted file: "
                      f"{litert.first_line(e)}") from e
  row = {
      "file": os.path.basename(path), "runtime": "LiteRT",
      "op_resolver": runner.op_resolver,
      "sparse_encoded": config.sparse,
      "sparsity": litert.weight_sparsity(content),
      "latency_ms": latency_model.latency_ms(one_image, config.latency_runs),
      "ops": litert.op_counts(content),
      "_logit_step": litert.output_step(content),
  }
  if runner.fallback_reason:
    row["op_resolver_fallback_reason"] = runner.fallback_reason
  seeds = litert.random_seeds(content)
  if seeds:
    row["random_op_seeds"] = [list(pair) for pair in seeds]
    if seeds != [(0, 0)]:
      notes.append("the random ops have fixed seeds (a global TensorFlow "
                   "seed was set while exporting): every interpreter draws "
                   "the same noise sequence")
  return row, lambda x: runner.predict(x, config.batch_size), notes


# ---------------------------------------------------------------------------
# The export.


def _check_output_dir(output_dir):
  """Refuses to replace a folder that is not an earlier export."""
  if os.path.isfile(output_dir):
    raise ExportError(f"--output_dir {output_dir} is a file")
  if (os.path.isdir(output_dir) and os.listdir(output_dir) and
      not os.path.isfile(os.path.join(output_dir, REPORT_NAME))):
    raise ExportError(f"--output_dir {output_dir} holds files but no "
                      f"{REPORT_NAME}; refusing to replace it")
  parent = os.path.dirname(os.path.abspath(output_dir))
  try:
    outputs.check_writable(parent)
  except OSError as e:
    raise ExportError(str(e)) from e


def _replace_dir(source, target):
  """Moves folder `source` to `target`, replacing an existing `target`."""
  if not os.path.exists(target):
    os.rename(source, target)
    return
  parent = os.path.dirname(os.path.abspath(target))
  old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(target)}.old-")
  os.rmdir(old)
  os.rename(target, old)
  os.rename(source, target)
  shutil.rmtree(old, ignore_errors=True)


def _check_model(model, name):
  shape = tuple(model.input_shape)
  if len(shape) != 4 or None in shape[1:]:
    raise ExportError(f"model {name} takes inputs of shape {list(shape)}; "
                      "export needs images of one fixed size [N, H, W, C]")
  if len(model.output_shape) != 2:
    raise ExportError(f"model {name} outputs shape {list(model.output_shape)}; "
                      f"export needs logits [N, classes]")
  try:
    convert.require_logits(model, "export")
  except convert.ModelError as e:
    raise ExportError(str(e)) from None


def _to_float(images, what):
  """uint8 pixels or float images in [0, 1] -> float32 in [0, 1]."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  images = images.astype(np.float32)
  if images.size and (images.min() < 0 or images.max() > 1):
    raise ExportError(f"{what} must be uint8 pixels or floats in [0, 1], got "
                      f"values from {images.min():g} to {images.max():g}")
  return images


def _load(model):
  """(model, its .keras path or None) from a model object or a path."""
  if isinstance(model, (str, os.PathLike)):
    path = os.fspath(model)
    if not os.path.isfile(path):
      raise ExportError(f"model file {path} does not exist")
    try:
      return models.load(path), path
    except ValueError as e:
      raise ExportError(str(e)) from e
  if not isinstance(model, tf_keras.Model):
    raise ExportError(f"export needs a tf_keras model or a .keras path, got "
                      f"{type(model).__name__}")
  return model, None


def export(model, output_dir, formats=None, representative_data=None,
           validation_data=None, class_names=None, sparse=None, noise=None,
           config=None, data_source=None, argv=None, log=None):
  """Exports `model` to SavedModel and TFLite, each artifact verified.

  Everything is built and checked in a temporary folder beside `output_dir`.
  If every check passes, that folder replaces `output_dir` in one rename;
  otherwise `output_dir` is left as it was and the build, with its
  `export.json`, goes to `<output_dir>.failed` for inspection. The input
  shape and the class count are read from the model.

  Args:
    model: a tf_keras model (saved as `model.keras` in the export too) or
      the path of a `.keras` file; [0, 1] images in, logits out.
    output_dir: where the artifacts, `export.json` and `labels.txt` go.
    formats: a subset of `FORMATS` (default: the config's, all four).
    representative_data: images [N, H, W, C], uint8 or float in [0, 1]: the
      int8 calibration set (needed for "tflite_int8"), and the verification
      images when `validation_data` is None.
    validation_data: (images, labels) the artifacts are checked on. Without
      it the representative images are labelled with the Keras model's own
      predictions, so "accuracy" there is agreement with Keras.
    class_names: names written to `labels.txt` (default "0", "1", ...).
    sparse, noise: override the config's `sparse` and `noise`.
    config: an `ExportConfig` for everything else.
    data_source: where the data came from, for the report.
    argv: the command line recorded as provenance (default `sys.argv`).
    log: a function taking one line of progress (default: stderr).

  Returns:
    The report written as `export.json`; "passed" says whether every check
    passed and "written_to" where the folder went.

  Raises:
    ExportError: bad model, data, output folder or settings, or a failed
      conversion; nothing is written then.
  """
  config = config or ExportConfig()
  overrides = {k: v for k, v in (("formats", formats), ("sparse", sparse),
                                  ("noise", noise)) if v is not None}
  if "formats" in overrides:
    overrides["formats"] = tuple(dict.fromkeys(overrides["formats"]))
  config = dataclasses.replace(config, **overrides).validate()
  log = log or (lambda line: print(line, file=sys.stderr, flush=True))
  _check_output_dir(output_dir)
  model, model_path = _load(model)
  name = model_path or model.name
  _check_model(model, name)
  num_classes = int(model.output_shape[-1])
  shape = _image_shape(model)
  if representative_data is None and validation_data is None:
    raise ExportError("export needs representative_data (int8 calibration) or "
                      "validation_data (verification images)")
  if representative_data is None and "tflite_int8" in config.formats:
    raise ExportError("tflite_int8 needs representative_data: images to "
                      "calibrate the int8 ranges on")
  representative = (None if representative_data is None else
                    _to_float(representative_data, "representative_data"))
  if validation_data is not None:
    images = _to_float(validation_data[0], "validation_data images")
    labels = np.asarray(validation_data[1]).astype(np.int64)
    labelled = "given labels"
  else:
    images, labels, labelled = representative, None, "Keras' predictions"
  for what, batch in (("representative_data", representative),
                      ("validation_data", images)):
    if batch is not None and (batch.ndim != 4 or tuple(batch.shape[1:]) != shape
                              or not len(batch)):
      raise ExportError(f"{what} has shape {list(batch.shape)}; the model "
                        f"takes [N, {', '.join(map(str, shape))}] with N >= 1")
  if labels is not None and labels.size and labels.max() >= num_classes:
    raise ExportError(f"model {name} has {num_classes} classes but the labels "
                      f"go up to {labels.max()}")
  class_names = (list(class_names) if class_names is not None
                 else [str(i) for i in range(num_classes)])
  if len(class_names) != num_classes:
    raise ExportError(f"model {name} has {num_classes} classes but "
                      f"{len(class_names)} class names were given")
  # The caller's model gets its own noise setting back afterwards.
  with rsr_layers.noise_enabled_as(model, config.noise):
    noisy = config.noise and bool(rsr_layers.alphas(model))
    if labels is None:
      labels = np.argmax(
          _batched(_keras_fn(model), config.batch_size)(images), -1)
    one_image = images[:1]

    parent = os.path.dirname(os.path.abspath(output_dir))
    build = tempfile.mkdtemp(dir=parent,
                             prefix=f".{os.path.basename(output_dir)}.tmp-")
    try:
      if model_path is None:
        model_path = os.path.join(build, MODEL_FILE)
        model.save(model_path)
      data = {"source": data_source or "arrays passed to rsr_tf.export",
              "representative_examples": 0 if representative is None
              else len(representative),
              "eval_examples": len(labels), "labels": labelled,
              "class_names": class_names}
      report = _build(model, model_path, data, config, noisy, images, labels,
                      representative, one_image, build, argv, log)
      if os.path.dirname(os.path.abspath(model_path)) == build:
        report["keras"]["file"] = MODEL_FILE
      target = output_dir if report["passed"] else (
          output_dir.rstrip(os.sep) + ".failed")
      report["written_to"] = os.path.abspath(target)
      outputs.write_json_atomic(os.path.join(build, REPORT_NAME), report)
      _replace_dir(build, target)
      return report
    except BaseException:
      shutil.rmtree(build, ignore_errors=True)
      raise


def _build(model, model_path, data, config, noisy, images, labels,
           representative, one_image, build, argv, log):
  start = time.perf_counter()
  keras_fn = _batched(_keras_fn(model), config.batch_size)
  if noisy:
    reference = {"accuracy": _accuracy_over_draws(keras_fn, images, labels,
                                                  config.noise_draws)}
  else:
    logits = keras_fn(images)
    reference = {"logits": logits, "accuracy": {
        "mean": _accuracy(logits, labels), "std": 0.0,
        "per_draw": [_accuracy(logits, labels)]}}
  keras_size = _sizes(model_path)
  keras_row = {
      "file": os.path.abspath(model_path), "bytes": keras_size[0],
      "gzip_bytes": keras_size[1],
      "sparsity": pruning.measured_sparsity(model)["overall"],
      "latency_ms": litert.median_latency_ms(_keras_fn(model), one_image,
                                       config.latency_runs),
      "accuracy": reference["accuracy"],
  }
  log(f"keras reference: accuracy {_acc_text(reference['accuracy'])}")

  artifacts, checks, notes = {}, [], []
  dense_float = None
  for fmt in config.formats:
    t0 = time.perf_counter()
    path = os.path.join(build, ARTIFACT_NAMES[fmt])
    if fmt == "saved_model":
      row, classify = _saved_model_artifact(model, path, config, one_image)
    else:
      row, classify, fmt_notes = _tflite_artifact(
          model, fmt, path, config, noisy, representative, one_image)
      notes.extend(f"{fmt}: {n}" for n in fmt_notes)
      if fmt == "tflite_float" and not config.sparse:
        dense_float = _sizes(path)
    row["bytes"], row["gzip_bytes"] = _sizes(path)
    row["sha256"] = outputs.sha256_of(path)
    results, fmt_checks = _verify(fmt, classify, reference, images, labels,
                                  config, noisy, row.pop("_logit_step", None))
    row.update(results)
    row["checks"] = fmt_checks
    checks.extend(dict(c, artifact=fmt) for c in fmt_checks)
    artifacts[fmt] = row
    status = "ok" if all(c["passed"] for c in fmt_checks) else "FAILED"
    log(f"{fmt}: {status}, accuracy {_acc_text(row['accuracy'])}, "
        f"{row['bytes']} bytes ({time.perf_counter() - t0:.1f}s)")

  tflite = [f for f in config.formats if f.startswith("tflite")]
  if tflite and dense_float is None:
    # The size reference is always a dense float TFLite file of the same
    # model and noise setting; it is measured but not written.
    content, _ = _convert_tflite(model, "tflite_float", False, None, noisy)
    dense_float = (len(content),
                   len(gzip.compress(content, compresslevel=9, mtime=0)))
  size_target = None
  if dense_float:
    for fmt in tflite:
      artifacts[fmt]["bytes_vs_dense_float"] = (
          artifacts[fmt]["bytes"] / dense_float[0])
      artifacts[fmt]["gzip_vs_dense_float"] = (
          artifacts[fmt]["gzip_bytes"] / dense_float[1])
    if "tflite_int8" in artifacts:
      ratio = artifacts["tflite_int8"]["gzip_vs_dense_float"]
      size_target = {
          "artifact": "tflite_int8", "sparse_encoded": config.sparse,
          "noise": "on" if noisy else "off", "gzip_ratio": ratio,
          "target": SIZE_TARGET, "met": ratio <= SIZE_TARGET,
          "rule": "gzip size of the int8 file / gzip size of the dense float "
                  "TFLite file with the same noise setting"}

  with open(os.path.join(build, LABELS_NAME), "w") as f:
    f.write("".join(f"{name}\n" for name in data["class_names"]))
  if noisy:
    notes.append("noise on: TFLite files compute each noisy layer as "
                 "conv(x, w) + conv(x, noise), with the pruning mask stored "
                 "as a bool constant per layer; the SavedModel keeps "
                 "conv(x, w + noise)")
  if config.noise and not noisy:
    notes.append("--noise=on, but the model has no noisy layers: exported "
                 "deterministic")
  passed = all(c["passed"] for c in checks)
  report = {
      "passed": passed,
      "failed_checks": [c for c in checks if not c["passed"]],
      "noise": "on" if noisy else "off",
      "noise_requested": "on" if config.noise else "off",
      "sparse": config.sparse,
      "artifacts": artifacts,
      "keras": keras_row,
      "reference_dense_float_tflite": (
          {"bytes": dense_float[0], "gzip_bytes": dense_float[1]}
          if dense_float else None),
      "size_target": size_target,
      "notes": notes,
      "model": {"path": os.path.abspath(model_path),
                "sha256": outputs.sha256_of(model_path),
                "noise_modes": sorted({layer.noise for layer in
                                       rsr_layers.noisy_layers(model)}),
                "input_shape": list(_image_shape(model)),
                "num_classes": int(model.output_shape[-1])},
      "data": data,
      "config": {**dataclasses.asdict(config),
                 "formats": list(config.formats)},
      "provenance": outputs.provenance(argv),
      "seconds": time.perf_counter() - start,
  }
  return report


def _acc_text(acc):
  if len(acc["per_draw"]) > 1:
    return f"{acc['mean']:.4f} ± {acc['std']:.4f}"
  return f"{acc['mean']:.4f}"


def _kb(n):
  return f"{n / 1024:.1f}"


def format_table(report):
  """The report as a fixed-width table, one row per artifact, then checks."""
  header = (f"{'artifact':<15} {'KiB':>8} {'gz KiB':>8} {'gz/dense':>8} "
            f"{'sparsity':>8} {'ms/img':>7} {'accuracy':>17}  runtime")
  lines = [f"export: noise {report['noise']}, sparse "
           f"{'on' if report['sparse'] else 'off'}", header]
  rows = [("keras", report["keras"])] + list(report["artifacts"].items())
  for name, row in rows:
    ratio = row.get("gzip_vs_dense_float")
    runtime = row.get("runtime", "tf_keras")
    if "op_resolver" in row:
      runtime += " " + ("AUTO (XNNPACK)" if row["op_resolver"] ==
                        litert.DEFAULT_RESOLVER else row["op_resolver"])
    lines.append(
        f"{name:<15} {_kb(row['bytes']):>8} {_kb(row['gzip_bytes']):>8} "
        f"{'' if ratio is None else f'{ratio:.3f}':>8} "
        f"{_sparsity_of(row):>8.4f} {row['latency_ms']:>7.2f} "
        f"{_acc_text(row['accuracy']):>17}  {runtime}")
  lines.append("")
  lines.append(f"{'artifact':<15} {'check':<24} {'value':>12} {'limit':>12}  result")
  for fmt, row in report["artifacts"].items():
    for c in row["checks"]:
      lines.append(f"{fmt:<15} {c['check']:<24} {_value(c['value']):>12} "
                   f"{_value(c['limit']):>12}  "
                   f"{'pass' if c['passed'] else 'FAIL'}")
  target = report.get("size_target")
  if target:
    lines.append("")
    lines.append(f"size: int8 gzip / dense float gzip = "
                 f"{target['gzip_ratio']:.3f} (target <= {target['target']}, "
                 f"noise {target['noise']}, sparse "
                 f"{'on' if target['sparse_encoded'] else 'off'}): "
                 f"{'met' if target['met'] else 'NOT met'}")
  for note in report.get("notes", []):
    lines.append(f"note: {note}")
  lines.append(f"{'all checks passed' if report['passed'] else 'CHECKS FAILED'}"
               f"; written to {report.get('written_to', '?')}")
  return "\n".join(lines)


def _sparsity_of(row):
  sparsity = row["sparsity"]
  return sparsity["overall"] if isinstance(sparsity, dict) else sparsity


def _value(value):
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, float):
    return f"{value:.3g}" if value < 1e-3 and value else f"{value:.4f}"
  return str(value)
