"""How small can the exported model get? TFLite sizes against an entropy bound.

For one pruned Keras model, converts every TFLite format with and without
sparse encoding, with the noise off and on, and reports raw and gzip bytes
against the dense float file of the same noise setting. It also reports what
those bytes hold (int8/float weights, sparse index metadata, pruning masks)
and a lower bound no lossless coder can beat for the int8 weights: the
entropy of the zero pattern plus the entropy of the nonzero int8 values,
layer by layer, under per-output-channel symmetric quantisation (TFLite's).

With --reference_model (a dense, unpruned model of the same architecture),
every file is also set against what a user would otherwise ship: that
model's gzipped float TFLite file with the noise off. Issue 17's targets are
on that ratio for sparse int8: <= 0.08 with the noise off, <= 0.10 with it on.

  python benchmarks/export_size.py --model=results/models/cpu/rsr_85.keras \
    --reference_model=results/models/cpu/at.keras --image_folder=/data/cifar10 \
    --output=benchmarks/export_size.json
"""

import gzip
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rsr_tf  # noqa: E402,F401
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS
FORMATS = ("tflite_float", "tflite_dynamic", "tflite_int8")


def define_flags():
  flags.DEFINE_string("model", None, "A pruned .keras model.")
  flags.DEFINE_string("reference_model", None, "A dense, unpruned .keras "
                      "model of the same architecture: the size reference.")
  flags.DEFINE_string("output", None, "Optional JSON report.")
  flags.DEFINE_integer("representative", 200, "int8 calibration images.",
                       lower_bound=1)
  _cli.define_data_flags(train_limit=200, eval_limit=10)
  flags.adopt_module_key_flags(_cli)


def _gzip_bytes(content):
  return len(gzip.compress(content, compresslevel=9, mtime=0))


def _contents(content):
  """Bytes of a .tflite by what they hold: weights, sparse metadata, masks."""
  import numpy as np
  from ai_edge_litert import schema_py_generated as schema
  model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))
  from rsr_tf import layers as rsr_layers
  parts = {"weights": 0, "sparse_metadata": 0, "bool_masks": 0,
           "noise_constants": 0}
  for graph in model.subgraphs:
    for tensor in graph.tensors:
      data = model.buffers[tensor.buffer].data
      if data is None or len(data) == 0:
        continue
      name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
      if rsr_layers.NOISE_SCOPE in name:
        # The noise path's own constants: the kept weights' positions.
        parts["noise_constants"] += len(data)
      elif tensor.type == schema.TensorType.BOOL:
        parts["bool_masks"] += len(data)
      elif len(data) >= 1024:  # kernels; small constants are not weights
        parts["weights"] += len(data)
      for dim in (tensor.sparsity.dimMetadata if tensor.sparsity else []):
        for array in (dim.arraySegments, dim.arrayIndices):
          if array is not None and getattr(array, "values", None) is not None:
            parts["sparse_metadata"] += np.asarray(array.values).nbytes
  return parts


def entropy_bound_bytes(model):
  """Bytes no lossless coder can go below for the int8 kernels (per layer)."""
  import numpy as np
  from rsr_tf import pruning
  positions = values = 0.0
  for kernel in pruning.kernels(model).values():
    w = kernel.numpy()
    nonzero = w != 0
    p = nonzero.mean()
    if 0 < p < 1:
      positions += w.size * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    scale = np.abs(w).max(axis=tuple(range(w.ndim - 1)), keepdims=True) / 127
    q = np.round(w / np.where(scale > 0, scale, 1))[nonzero]
    _, counts = np.unique(q, return_counts=True)
    values += float(-(counts * np.log2(counts / counts.sum())).sum())
  return {"positions": positions / 8, "int8_values": values / 8,
          "total": (positions + values) / 8}


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.model or not os.path.exists(FLAGS.model):
    _cli.fail(f"--model {FLAGS.model!r} does not exist")
  _cli.quiet_tensorflow_startup()
  logging.set_verbosity(logging.WARNING)  # the converter logs every SavedModel it writes
  from rsr_tf import data as data_lib  # noqa: E402
  from rsr_tf import conversion  # noqa: E402
  from rsr_tf import layers as rsr_layers  # noqa: E402
  from rsr_tf import models  # noqa: E402
  from rsr_tf import outputs  # noqa: E402

  model = models.load(FLAGS.model)
  dataset = data_lib.load(_cli.data_config_from_flags())
  representative = (dataset.train.images[:FLAGS.representative]
                    .astype("float32") / 255)
  noise_settings = [False] + ([True] if rsr_layers.alphas(model) else [])
  bound = entropy_bound_bytes(model)
  unpruned = None
  if FLAGS.reference_model:
    if not os.path.exists(FLAGS.reference_model):
      _cli.fail(f"--reference_model {FLAGS.reference_model!r} does not exist")
    reference_model = models.load(FLAGS.reference_model)
    rsr_layers.set_noise_enabled(reference_model, False)
    content, _ = conversion.convert_tflite(reference_model, "tflite_float",
                                           False, None, False)
    unpruned = {"model": os.path.abspath(FLAGS.reference_model),
                "model_sha256": outputs.sha256_of(FLAGS.reference_model),
                "bytes": len(content), "gzip_bytes": _gzip_bytes(content)}
    print(f"reference: {FLAGS.reference_model}, dense float, noise off: "
          f"{unpruned['gzip_bytes'] / 1024:.1f} KiB gzipped", flush=True)
  rows = []
  for noisy in noise_settings:
    rsr_layers.set_noise_enabled(model, noisy)
    reference = None
    for fmt in FORMATS:
      for sparse in (False, True):
        content, _ = conversion.convert_tflite(model, fmt, sparse,
                                               representative, noisy)
        row = {"noise": "on" if noisy else "off", "format": fmt,
               "sparse_encoded": sparse, "bytes": len(content),
               "gzip_bytes": _gzip_bytes(content), **_contents(content)}
        if fmt == "tflite_float" and not sparse:
          reference = row
        row["bytes_vs_dense_float"] = row["bytes"] / reference["bytes"]
        row["gzip_vs_dense_float"] = row["gzip_bytes"] / reference["gzip_bytes"]
        row["bound_vs_dense_float_gzip"] = bound["total"] / reference["gzip_bytes"]
        if unpruned:
          row["gzip_vs_unpruned_float"] = row["gzip_bytes"] / unpruned["gzip_bytes"]
        rows.append(row)
        print(f"noise {row['noise']:3s} {fmt:15s} sparse {str(sparse):5s} "
              f"raw {row['bytes'] / 1024:7.1f} KiB ({row['bytes_vs_dense_float']:.3f}) "
              f"gzip {row['gzip_bytes'] / 1024:6.1f} KiB "
              f"({row['gzip_vs_dense_float']:.3f})  masks "
              f"{row['bool_masks'] / 1024:5.1f} KiB, noise positions "
              f"{row['noise_constants'] / 1024:5.1f} KiB, sparse metadata "
              f"{row['sparse_metadata'] / 1024:5.1f} KiB"
              + (f"; vs unpruned float {row['gzip_vs_unpruned_float']:.3f}"
                 if unpruned else ""), flush=True)
  print(f"entropy bound of the int8 kernels: {bound['total'] / 1024:.1f} KiB "
        f"(zero pattern {bound['positions'] / 1024:.1f} + values "
        f"{bound['int8_values'] / 1024:.1f})")
  if FLAGS.output:
    outputs.write_json_atomic(FLAGS.output, {
        "model": os.path.abspath(FLAGS.model),
        "model_sha256": outputs.sha256_of(FLAGS.model),
        "entropy_bound_bytes": bound, "rows": rows,
        "unpruned_reference": unpruned,
        "targets": {"gzip_vs_unpruned_float": {"noise off": 0.08, "noise on": 0.10},
                    "format": "tflite_int8", "sparse_encoded": True},
        "data": dataset.source, "provenance": outputs.provenance(argv)})


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
