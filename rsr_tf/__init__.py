"""rsr-tf: Robust Sparse Regularization (PNI + PGD training + lasso + pruning) in tf_keras.

The public API, for any Sequential or functional tf_keras model:

  import rsr_tf                     # first: selects Keras 2 for TensorFlow
  noisy = rsr_tf.add_weight_noise(model)
  result = rsr_tf.train_rsr(noisy, train_data, validation_data, epochs=...)
  report = rsr_tf.evaluate(result.model, (test_images, test_labels))
  rsr_tf.export(result.model, "export/", representative_data=images)

Names resolve on first use, so `import rsr_tf` stays light (scripts check
their flags before TensorFlow loads).
"""

import importlib
import os
import platform

# tfmot only works with Keras 2; this must hold before TensorFlow is imported,
# so it lives here, the first thing any rsr_tf import runs.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow turns its oneDNN kernels on by itself only on x86 CPUs with
# AVX-512-class features; without them it falls back to Eigen, which trains
# RSR at half the speed (57 against 114 images/s, PGD-2, on a 2-core AMD EPYC
# without AVX-512). A value the user set wins.
if platform.machine() in ("x86_64", "AMD64"):
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

# Public name -> the module that defines it: the one list of the API.
_PUBLIC = {
    "add_weight_noise": "convert",
    "logits_model": "convert",
    "ModelError": "convert",
    "RSRTrainer": "training",
    "train_rsr": "recipe",
    "RSRResult": "recipe",
    "Phase": "recipe",
    "TrainingError": "recipe",
    "prune_global": "pruning",
    "strip": "pruning",
    "measured_sparsity": "pruning",
    "evaluate": "evaluation",
    "export": "exporter",
    "ExportError": "exporter",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
  if name not in _PUBLIC:
    raise AttributeError(f"module 'rsr_tf' has no attribute {name!r}")
  value = getattr(importlib.import_module(f"rsr_tf.{_PUBLIC[name]}"), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_PUBLIC))
