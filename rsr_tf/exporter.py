"""SavedModel and TFLite export of a noisy, pruned model, verified against Keras.

`export` converts (`conversion`), measures and checks (`verification`) every
artifact, then moves the whole output folder into place in one rename
(`export_report`); it returns the report that it also writes as
`export.json`. `rsr_tf.artifacts.load_classifier` runs any artifact (or the
`.keras` model) as a function from [0, 1] images to logits.
"""

import dataclasses
import os
import sys
import time

import rsr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tf_keras

from rsr_tf import artifacts
from rsr_tf import conversion
from rsr_tf import convert
from rsr_tf import export_report
from rsr_tf import layers as rsr_layers
from rsr_tf import models
from rsr_tf import outputs
from rsr_tf import verification
# The error and the file names live with the artifacts (loading one raises
# it, and needs no part of the export); `rsr_tf.ExportError` resolves here,
# and FORMATS and REPORT_NAME are what `export` documents.
from rsr_tf.artifacts import ARTIFACT_NAMES
from rsr_tf.artifacts import ExportError
from rsr_tf.artifacts import FORMATS
from rsr_tf.artifacts import LABELS_NAME
from rsr_tf.artifacts import MODEL_FILE
from rsr_tf.artifacts import REPORT_NAME


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
    min_agreement: top-1 agreement with Keras required of quantised ones
      (0: reported only; their gate is paired accuracy parity).
  """
  formats: tuple = artifacts.DEFAULT_FORMATS
  sparse: bool = False
  noise: bool = True
  noise_draws: int = 5
  batch_size: int = 128
  latency_runs: int = 50
  num_threads: int = 1
  float_tolerance: float = 1e-4
  min_agreement: float = 0.0

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
    formats: a subset of `FORMATS` (default: the config's, all but
      tflite_int16x8).
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
  export_report.check_output_dir(output_dir)
  model, model_path = _load(model)
  name = model_path or model.name
  _check_model(model, name)
  num_classes = int(model.output_shape[-1])
  shape = artifacts.image_shape(model)
  if representative_data is None and validation_data is None:
    raise ExportError("export needs representative_data (int8 calibration) or "
                      "validation_data (verification images)")
  calibrated = [f for f in config.formats if f in artifacts.CALIBRATED]
  if representative_data is None and calibrated:
    raise ExportError(f"{calibrated[0]} needs representative_data: images to "
                      "calibrate the activation ranges on")
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
      labels = np.argmax(artifacts.batched(artifacts.keras_fn(model),
                                           config.batch_size)(images), -1)
    with export_report.staging(output_dir) as build:
      if model_path is None:
        model_path = os.path.join(build, MODEL_FILE)
        model.save(model_path)
      data = {"source": data_source or "arrays passed to rsr_tf.export",
              "representative_examples": 0 if representative is None
              else len(representative),
              "eval_examples": len(labels), "labels": labelled,
              "class_names": class_names}
      report = _build(model, model_path, data, config, noisy, images, labels,
                      representative, build, argv, log)
      if os.path.dirname(os.path.abspath(model_path)) == build:
        report["keras"]["file"] = MODEL_FILE
      return export_report.publish(build, output_dir, report)


def unpruned_reference(model):
  """(bytes, gzip bytes) of the float TFLite file the user would otherwise ship.

  That is the same architecture dense and unpruned, noise off. A fresh
  initialisation of it stands in for trained weights: float32 weights are
  near incompressible either way (on the cpu budget's ResNet-20, the fresh
  clone's gzip size was 0.992x that of the trained dense PGD-AT model, and
  0.991x that of the natural one).

  Returns:
    ((bytes, gzip bytes) or None, a note or None).
  """
  try:
    fresh = tf_keras.models.clone_model(model)
  except (TypeError, ValueError, NotImplementedError) as e:
    return None, (f"no size target: the architecture could not be cloned "
                  f"for the unpruned reference ({type(e).__name__}: {e})")
  rsr_layers.set_noise_enabled(fresh, False)
  content, _ = conversion.convert_tflite(fresh, "tflite_float", False, None,
                                         False)
  return (len(content), verification.gzip_bytes(content)), None


def _build(model, model_path, data, config, noisy, images, labels,
           representative, build, argv, log):
  """Writes, measures and checks every artifact in `build`; returns the report."""
  start = time.perf_counter()
  one_image = images[:1]
  reference, keras_row = verification.keras_reference(
      model, model_path, images, labels, config, noisy, one_image)
  log(f"keras reference: accuracy "
      f"{export_report.accuracy_text(reference['accuracy'])}")

  rows, notes = {}, []
  dense_float = None
  for fmt in config.formats:
    t0 = time.perf_counter()
    path = os.path.join(build, ARTIFACT_NAMES[fmt])
    if fmt == "saved_model":
      conversion.write_saved_model(model, path)
      row, classify = verification.measure_saved_model(model, path, config,
                                                       one_image)
    else:
      content, fmt_notes = conversion.convert_tflite(
          model, fmt, config.sparse, representative, noisy)
      with open(path, "wb") as f:
        f.write(content)
      row, classify, measured_notes = verification.measure_tflite(
          fmt, path, content, config, one_image)
      notes.extend(f"{fmt}: {n}" for n in fmt_notes + measured_notes)
      if fmt == "tflite_float" and not config.sparse:
        dense_float = verification.sizes(path)
    row["bytes"], row["gzip_bytes"] = verification.sizes(path)
    row["sha256"] = outputs.sha256_of(path)
    results, checks = verification.verify(
        fmt, classify, reference, images, labels, config, noisy,
        row.pop("_logit_step", None))
    row.update(results)
    row["checks"] = checks
    rows[fmt] = row
    status = "ok" if all(c["passed"] for c in row["checks"]) else "FAILED"
    log(f"{fmt}: {status}, accuracy "
        f"{export_report.accuracy_text(row['accuracy'])}, "
        f"{row['bytes']} bytes ({time.perf_counter() - t0:.1f}s)")

  if dense_float is None and any(f.startswith("tflite") for f in rows):
    # The size reference is always a dense float TFLite file of the same
    # model and noise setting; it is measured but not written.
    content, _ = conversion.convert_tflite(model, "tflite_float", False, None,
                                           noisy)
    dense_float = (len(content), verification.gzip_bytes(content))
  unpruned = None
  if any(f.startswith("tflite") for f in rows):
    unpruned, note = unpruned_reference(model)
    if note:
      notes.append(note)
  with open(os.path.join(build, LABELS_NAME), "w") as f:
    f.write("".join(f"{name}\n" for name in data["class_names"]))
  return export_report.assemble(model, model_path, data, config, noisy, rows,
                                keras_row, dense_float, unpruned, notes, argv,
                                time.perf_counter() - start)
