"""Each exported artifact measured and checked against the Keras model it came from.

Measured: file size and gzip size, weight sparsity read from the artifact's
own stored weights, latency. Checked, noise off: determinism, and logit parity
(float) or paired accuracy parity (quantised; top-1 agreement is reported).
Checked, noise on: the noise survived, and the accuracy over noise draws
matches Keras' within the spread (`scoring.tolerance`).
"""

import gzip
import os

import rsr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf

from rsr_tf import artifacts
from rsr_tf import latency
from rsr_tf import litert
from rsr_tf import pruning
from rsr_tf import scoring
from rsr_tf.artifacts import ExportError


def sizes(path):
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
    packed += gzip_bytes(data)
  return size, packed


def gzip_bytes(data):
  """Size of `data` after gzip -9 (mtime 0, so equal inputs pack equally)."""
  return len(gzip.compress(data, compresslevel=9, mtime=0))


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


def _single_draw(logits, labels):
  accuracy = _accuracy(logits, labels)
  return {"mean": accuracy, "std": 0.0, "per_draw": [accuracy]}


def _noise_present(classify, images):
  """Whether two passes over the same images give different logits."""
  return bool(np.any(classify(images) != classify(images)))


def _check(name, value, limit, passed, rule):
  return {"check": name, "value": value, "limit": limit,
          "passed": bool(passed), "rule": rule}


def keras_reference(model, model_path, images, labels, config, noisy,
                    one_image):
  """What every artifact is compared with; returns (reference, keras row).

  The reference holds the accuracy (over `config.noise_draws` passes when
  `noisy`) and, noise off, the logits; the row is the report's "keras" line.
  """
  keras_fn = artifacts.batched(artifacts.keras_fn(model), config.batch_size)
  if noisy:
    reference = {"accuracy": _accuracy_over_draws(keras_fn, images, labels,
                                                  config.noise_draws)}
  else:
    logits = keras_fn(images)
    reference = {"logits": logits, "accuracy": _single_draw(logits, labels)}
  keras_size = sizes(model_path)
  row = {
      "file": os.path.abspath(model_path), "bytes": keras_size[0],
      "gzip_bytes": keras_size[1],
      "sparsity": pruning.measured_sparsity(model)["overall"],
      "latency_ms": latency.median_ms(artifacts.keras_fn(model), one_image,
                                      config.latency_runs),
      "accuracy": reference["accuracy"],
  }
  return reference, row


def verify(fmt, classify, reference, images, labels, config, noisy,
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
  top1, keras_top1 = np.argmax(logits, -1), np.argmax(reference["logits"], -1)
  agreement = float(np.mean(top1 == keras_top1))
  if fmt in artifacts.QUANTIZED:
    # Issue 17's gate is accuracy parity; agreement is limited by the
    # model's own margins, so it is gated only when the user asks.
    gap, limit = scoring.paired_tolerance((top1 == labels)[None],
                                          (keras_top1 == labels)[None])
    checks.append(_check(
        "accuracy matches Keras", gap, limit, gap <= limit,
        "paired over the same images: |accuracy - Keras accuracy| <= 2 "
        "standard errors + one image (scoring.paired_tolerance)"))
    if config.min_agreement:
      checks.append(_check("top-1 agreement", agreement, config.min_agreement,
                           agreement >= config.min_agreement,
                           "share of images with Keras' top-1 class"))
  else:
    checks.append(_check("max |logit diff|", diff, config.float_tolerance,
                         diff <= config.float_tolerance,
                         "largest absolute logit difference from Keras"))
  results = {"accuracy": _single_draw(logits, labels),
             "max_abs_logit_diff": diff, "top1_agreement": agreement}
  if logit_step:
    top2 = np.sort(reference["logits"], axis=-1)[:, -2:]
    results["logit_step"] = logit_step
    results["keras_margin_below_logit_step"] = float(
        np.mean(top2[:, 1] - top2[:, 0] < logit_step))
  return results, checks


def measure_saved_model(model, path, config, one_image):
  """Measures a written SavedModel folder; returns (row, classify)."""
  serve = tf.saved_model.load(path).signatures[artifacts.SIGNATURE_KEY]
  row = {
      "file": os.path.basename(path), "runtime": "TensorFlow",
      "sparsity": _saved_model_sparsity(path),
      "latency_ms": latency.median_ms(
          lambda x: serve(**{artifacts.INPUT_NAME: tf.constant(x)}), one_image,
          config.latency_runs),
      "signature": {"key": artifacts.SIGNATURE_KEY,
                    "input": artifacts.INPUT_NAME,
                    "output": artifacts.OUTPUT_NAME,
                    "input_spec": ["N", *artifacts.image_shape(model),
                                   "float32 in [0, 1]"]},
  }
  return row, artifacts.saved_model_classifier(path, config.batch_size)


def measure_tflite(fmt, path, content, config, one_image):
  """Measures a written TFLite file; returns (row, classify, notes).

  The row's "_logit_step" (int8 output resolution, or None) is for `verify`
  and is popped before the row is reported.

  Raises:
    ExportError: LiteRT cannot run the file.
  """
  try:
    runner = litert.Model(model_path=path, num_threads=config.num_threads)
    # Its own interpreter, so latency stays at batch 1 while `runner`
    # resizes to the verification batches.
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
      "latency_ms": latency.median_ms(latency_model, one_image,
                                      config.latency_runs),
      "ops": litert.op_counts(content),
      "_logit_step": litert.output_step(content),
  }
  if runner.fallback_reason:
    row["op_resolver_fallback_reason"] = runner.fallback_reason
  notes = []
  seeds = litert.random_seeds(content)
  if seeds:
    row["random_op_seeds"] = [list(pair) for pair in seeds]
    if seeds != [(0, 0)]:
      notes.append("the random ops have fixed seeds (a global TensorFlow "
                   "seed was set while exporting): every interpreter draws "
                   "the same noise sequence")
  return row, lambda x: runner.predict(x, config.batch_size), notes
