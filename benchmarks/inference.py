"""Inference cost against robustness: LiteRT latency of dense, unstructured and channel-pruned models.

  python benchmarks/inference.py --models=dense=results/models/cpu/at.keras,\
unstructured=results/models/cpu/rsr_85.keras,channel=runs/channel/model.keras \
    --image_folder=/tmp/cifar10 --output_dir=benchmarks/inference

For each model, with the noise on and off (noisy models only) and in float
and int8 TFLite: LiteRT's median latency over repeated invokes at batch 1
and 32, with 1 and 2 threads (XNNPACK where it prepares, the builtin kernels
otherwise), beside Keras on the same inputs; MACs, parameters, gzip size,
clean and PGD-7 accuracy of the TFLite model on held-out images, and robust
accuracy (all attacks) where an eval.json is given. Every latency of one
table is measured in one run, so the ratios compare. Writes inference.md,
inference.json and latency_vs_robustness.png.
"""

import gzip
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rsr_tf  # noqa: E402,F401
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS
FORMATS = ("tflite_float", "tflite_int8")


def define_flags():
  flags.DEFINE_list("models", None, "name=PATH.keras pairs, e.g. dense=...,"
                    "unstructured=...,channel=...; the first is the "
                    "reference of the speed-ups.")
  flags.DEFINE_list("evals", [], "name=eval.json pairs: robust accuracy (all "
                    "attacks) for the table and the plot.")
  _cli.define_data_flags(eval_limit=500, training=False)
  flags.adopt_module_key_flags(_cli)
  flags.DEFINE_list("batches", ["1", "32"], "Batch sizes timed.")
  flags.DEFINE_list("threads", ["1", "2"], "LiteRT thread counts timed.")
  flags.DEFINE_integer("runs", 50, "Timed invokes per latency (median).",
                       lower_bound=1)
  flags.DEFINE_string("output_dir", "benchmarks/inference", "Where the table, "
                      "JSON and plot go.")


def _pairs(items, what):
  out = {}
  for item in items:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      _cli.fail(f"--{what}: expected name=path, got {item!r}")
    if not os.path.exists(path):
      _cli.fail(f"--{what}: {path} does not exist")
    out[name] = path
  return out


def _accuracy(predict, x, y):
  import numpy as np  # noqa: E402
  return float(np.mean(np.argmax(predict(x), -1) == y))


def measure(name, model, x, y, representative, batches, threads, runs):
  """Rows of one model: each (noise, format), plus Keras, with costs."""
  import numpy as np  # noqa: E402
  import tensorflow as tf  # noqa: E402
  from rsr_tf import attacks  # noqa: E402
  from rsr_tf import channels  # noqa: E402
  from rsr_tf import conversion  # noqa: E402
  from rsr_tf import latency  # noqa: E402
  from rsr_tf import layers as rsr_layers  # noqa: E402
  from rsr_tf import litert  # noqa: E402
  from rsr_tf import pruning  # noqa: E402

  noisy = bool(rsr_layers.alphas(model))
  pgd = tf.function(lambda a, b: attacks.pgd(attacks.inference_fn(model), a, b,
                                             eps=8 / 255, step_size=2 / 255,
                                             steps=7))
  # PGD on the Keras model, scored on each artifact: a transfer of the
  # white-box attack, the same adversarial images for every format.
  x_adv = np.concatenate([pgd(tf.constant(x[i:i + 128]), tf.constant(y[i:i + 128]))
                          for i in range(0, len(y), 128)])
  common = {"model": name, "macs": channels.macs(model),
            "parameters": int(model.count_params()),
            "sparsity": pruning.measured_sparsity(model)["overall"]}
  rows = []
  for noise in ([True, False] if noisy else [False]):
    rsr_layers.set_noise_enabled(model, noise)
    keras_row = dict(common, noise="on" if noise else "off", runtime="keras",
                     gzip_bytes=None, clean=_accuracy(model.predict, x, y),
                     pgd=_accuracy(model.predict, x_adv, y))
    for batch in batches:
      images = x[:batch]
      keras_row[f"ms_b{batch}"] = latency.median_ms(
          lambda b: model(b, training=False), tf.constant(images), runs=runs)
    rows.append(keras_row)
    for fmt in FORMATS:
      content, _ = conversion.convert_tflite(model, fmt, sparse=True,
                                             representative=representative,
                                             noisy=noise)
      row = dict(common, noise=keras_row["noise"], runtime=fmt,
                 gzip_bytes=len(gzip.compress(content, 9, mtime=0)))
      for thread in threads:
        interpreter = litert.Model(model_content=content, num_threads=thread)
        row["kernels"] = interpreter.op_resolver
        if thread == threads[0]:
          row["clean"] = _accuracy(interpreter.predict, x, y)
          row["pgd"] = _accuracy(interpreter.predict, x_adv, y)
        for batch in batches:
          row[f"ms_b{batch}_t{thread}"] = latency.median_ms(
              interpreter, x[:batch], runs=runs)
      rows.append(row)
  rsr_layers.set_noise_enabled(model, True)
  return rows


def table(rows, batches, threads, robust):
  """Markdown: one row per (model, noise, runtime), speed-ups against the first."""
  keys = [f"ms_b{b}_t{t}" for b in batches for t in threads]
  header = (["model", "noise", "runtime", "kernels", "MACs", "parameters",
             "gzip KiB", "clean %", "PGD-7 % (transfer from Keras)",
             "robust (all attacks) %"]
            + [f"ms, batch {b}, {t} thread(s)" for b in batches for t in threads])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  reference = {k: next((r[k] for r in rows if k in r), None) for k in keys}
  for r in rows:
    cells = [f"`{r['model']}`", r["noise"], r["runtime"], r.get("kernels", "—"),
             f"{r['macs'] / 1e6:.1f} M", f"{r['parameters']:,}",
             "—" if r["gzip_bytes"] is None else f"{r['gzip_bytes'] / 1024:.0f}",
             f"{100 * r['clean']:.1f}", f"{100 * r['pgd']:.1f}",
             robust.get(r["model"], "—")]
    for key in keys:
      if key in r:
        speedup = reference[key] / r[key] if reference[key] else None
        cells.append(f"{r[key]:.2f} ({speedup:.2f}x)" if speedup else f"{r[key]:.2f}")
      else:
        batch = key.split("_")[1][1:]
        cells.append(f"{r[f'ms_b{batch}']:.2f} (Keras)" if f"ms_b{batch}" in r else "—")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.models:
    _cli.fail("--models is required (name=PATH.keras,...)")
  models_of = _pairs(FLAGS.models, "models")
  evals = _pairs(FLAGS.evals, "evals")
  try:
    batches = [int(b) for b in FLAGS.batches]
    threads = [int(t) for t in FLAGS.threads]
  except ValueError:
    _cli.fail("--batches and --threads must be integers")
  _cli.check_image_folder(FLAGS.image_folder)
  _cli.quiet_tensorflow_startup()
  from rsr_tf import data as data_lib  # noqa: E402
  from rsr_tf import models  # noqa: E402
  from rsr_tf import outputs  # noqa: E402
  from rsr_tf import plotting  # noqa: E402

  loaded = {}
  for name, path in models_of.items():
    try:
      loaded[name] = models.load(path)
    except ValueError as e:
      _cli.fail(str(e))
  first = next(iter(loaded.values()))
  try:
    data = data_lib.load(_cli.shaped_like(_cli.data_config_from_flags(),
                                          tuple(first.input_shape[1:])))
  except data_lib.DataError as e:
    _cli.fail(str(e))
  x = data.test.images.astype("float32") / 255.0
  y = data.test.labels
  representative = data.train.images[:100].astype("float32") / 255.0
  robust = {}
  for name, path in evals.items():
    with open(path) as f:
      entry = json.load(f)["suite"]["results"].get("robust_all")
    if entry:
      robust[name] = f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"
  rows = []
  for name, model in loaded.items():
    print(f"measuring {name} ...", file=sys.stderr, flush=True)
    rows += measure(name, model, x, y, representative, batches, threads,
                    FLAGS.runs)
  out = FLAGS.output_dir
  os.makedirs(out, exist_ok=True)
  document = "\n".join([
      "# Inference cost against robustness", "",
      f"Generated by `{outputs.provenance()['command']}`; {len(y)} held-out images "
      f"of {data.source}. Latency: median over {FLAGS.runs} invokes; the "
      "speed-ups are against the first model's first TFLite row (float) in "
      "the same column, measured in this same run.", "",
      table(rows, batches, threads, robust), ""])
  outputs.write_text_atomic(os.path.join(out, "inference.md"), document)
  outputs.write_json_atomic(os.path.join(out, "inference.json"), {
      "rows": rows, "robust_all": robust, "provenance": outputs.provenance()})
  points = [(r["model"] + f" ({r['runtime']}, noise {r['noise']})",
             r.get(f"ms_b1_t{threads[0]}"), r["pgd"]) for r in rows
            if f"ms_b1_t{threads[0]}" in r]
  plotting.latency_vs_accuracy(points, os.path.join(out, "latency_vs_robustness.png"),
                               ylabel="PGD-7 accuracy (%)")
  print(document)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
