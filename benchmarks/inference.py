"""Inference cost against robustness: LiteRT latency of dense, unstructured and channel-pruned models.

  python benchmarks/inference.py --models=dense=results/models/cpu/at.keras,\
unstructured=results/models/cpu/rsr_85.keras,channel=runs/channel/model.keras \
    --image_folder=/tmp/cifar10 --output_dir=benchmarks/inference

For each model, with the noise on and off (noisy models only) and in float
and int8 TFLite: LiteRT's median latency over repeated invokes at batch 1
and 32, with 1 and 2 threads (XNNPACK where it prepares, the builtin kernels
otherwise), beside Keras on the same inputs; MACs, parameters, gzip size,
clean and PGD-7 accuracy of the TFLite model on held-out images, and robust
accuracy (all attacks) where an eval.json is given. Every call of every
model is timed in each of --rounds interleaved rounds of one run, so the
speed-ups compare on a shared machine. Writes inference.md, inference.json
and latency_vs_robustness.png.
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
  flags.DEFINE_list("threads", ["1", "2"], "LiteRT thread counts timed.")
  _cli.define_timing_flags(30, "Timed invokes per latency and round (their "
                           "median; the rounds' median is reported).")
  flags.adopt_module_key_flags(_cli)
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


def measure(name, model, x, y, representative, batches, threads):
  """Rows of one model, each (noise, runtime), and the calls to time.

  Returns (rows, timers): `timers` maps (row index within `rows`, column
  key) to (callable, batch), so that `main` can time every model's calls
  interleaved, in one run.
  """
  import numpy as np  # noqa: E402
  import tensorflow as tf  # noqa: E402
  from rsr_tf import attacks  # noqa: E402
  from rsr_tf import channels  # noqa: E402
  from rsr_tf import conversion  # noqa: E402
  from rsr_tf import layers as rsr_layers  # noqa: E402
  from rsr_tf import litert  # noqa: E402
  from rsr_tf import pruning  # noqa: E402

  noisy = bool(rsr_layers.alphas(model))
  common = {"model": name, "macs": channels.macs(model),
            "parameters": int(model.count_params()),
            "sparsity": pruning.measured_sparsity(model)["overall"]}
  rows, timers = [], {}
  for noise in ([True, False] if noisy else [False]):
    # The switch is read at trace time: one traced forward pass and one PGD
    # per setting, so noise-off rows are attacked white-box with the noise off.
    rsr_layers.set_noise_enabled(model, noise)
    forward = tf.function(attacks.inference_fn(model))
    for batch in batches:  # traced now, while the switch is in this state
      forward(tf.constant(x[:batch]))
    pgd = tf.function(lambda a, b: attacks.pgd(forward, a, b, eps=8 / 255,
                                               step_size=2 / 255, steps=7))
    # PGD-7 on the Keras model, scored on each artifact: the same
    # adversarial images for every runtime of this setting.
    x_adv = np.concatenate([pgd(tf.constant(x[i:i + 128]), tf.constant(y[i:i + 128]))
                            for i in range(0, len(y), 128)])
    keras_predict = lambda images: np.concatenate(  # noqa: E731
        [forward(tf.constant(images[i:i + 128])).numpy()
         for i in range(0, len(images), 128)])
    setting = "on" if noise else "off"
    rows.append(dict(common, noise=setting, runtime="keras", kernels="—",
                     gzip_bytes=None, clean=_accuracy(keras_predict, x, y),
                     pgd=_accuracy(keras_predict, x_adv, y)))
    for batch in batches:
      timers[(len(rows) - 1, f"ms_b{batch}")] = (forward, tf.constant(x[:batch]))
    for fmt in FORMATS:
      content, _ = conversion.convert_tflite(model, fmt, sparse=True,
                                             representative=representative,
                                             noisy=noise)
      row = dict(common, noise=setting, runtime=fmt,
                 gzip_bytes=len(gzip.compress(content, 9, mtime=0)))
      for thread in threads:
        interpreter = litert.Model(model_content=content, num_threads=thread)
        row["kernels"] = interpreter.op_resolver
        if thread == threads[0]:
          row["clean"] = _accuracy(interpreter.predict, x, y)
          row["pgd"] = _accuracy(interpreter.predict, x_adv, y)
        for batch in batches:
          timers[(len(rows), f"ms_b{batch}_t{thread}")] = (interpreter, x[:batch])
      rows.append(row)
  rsr_layers.set_noise_enabled(model, True)
  return rows, timers


def time_all(timers, rounds, runs):
  """{key: ms}: `latency.interleaved_median_ms` over every call, each on its batch."""
  from rsr_tf import latency  # noqa: E402

  print(f"timing: {rounds} interleaved rounds of {len(timers)} calls",
        file=sys.stderr, flush=True)
  calls = {key: (lambda _, fn=fn, batch=batch: fn(batch))
           for key, (fn, batch) in timers.items()}
  return latency.interleaved_median_ms(calls, None, rounds=rounds, runs=runs)


def _robust_cell(row, robust, noisy_models):
  """robust_all belongs to the Keras model as evaluated: noise on if it has any."""
  evaluated = "on" if row["model"] in noisy_models else "off"
  if row["runtime"] == "keras" and row["noise"] == evaluated:
    return robust.get(row["model"], "—")
  return "—"


def accuracy_table(rows, robust, noisy_models):
  """Markdown: what each (model, noise, runtime) costs and how it resists."""
  header = ["model", "noise", "runtime", "MACs", "parameters", "weight sparsity",
            "gzip KiB", "clean %", "PGD-7 %", "robust (all attacks) %"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [f"`{r['model']}`", r["noise"], r["runtime"], f"{r['macs'] / 1e6:.1f} M",
             f"{r['parameters']:,}", f"{r['sparsity']:.2f}",
             "—" if r["gzip_bytes"] is None else f"{r['gzip_bytes'] / 1024:.0f}",
             f"{100 * r['clean']:.1f}", f"{100 * r['pgd']:.1f}",
             _robust_cell(r, robust, noisy_models)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def latency_table(rows, batches, threads):
  """Markdown: ms per invoke, and the speed-up over the first TFLite row."""
  keys = [f"ms_b{b}_t{t}" for b in batches for t in threads]
  header = (["model", "noise", "runtime", "kernels"]
            + [f"batch {b}, {t} thread{'s' if t > 1 else ''}"
               for b in batches for t in threads])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  reference = {k: next((r[k] for r in rows if k in r), None) for k in keys}
  for r in rows:
    cells = [f"`{r['model']}`", r["noise"], r["runtime"], r["kernels"]]
    for key in keys:
      if key in r:
        cells.append(f"{r[key]:.2f} ({reference[key] / r[key]:.2f}x)")
      else:  # Keras: TensorFlow's own threads, one figure per batch size
        cells.append(f"{r['ms_b' + key.split('_')[1][1:]]:.2f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.models:
    _cli.fail("--models is required (name=PATH.keras,...)")
  models_of = _pairs(FLAGS.models, "models")
  evals = _pairs(FLAGS.evals, "evals")
  unknown = sorted(set(evals) - set(models_of))
  if unknown:
    _cli.fail(f"--evals names no model of --models: {', '.join(unknown)}")
  batches = _cli.timed_batches()
  try:
    threads = [int(t) for t in FLAGS.threads]
  except ValueError:
    _cli.fail(f"--threads must be integers, got {','.join(FLAGS.threads)}")
  _cli.check_image_folder(FLAGS.image_folder)
  _cli.quiet_tensorflow_startup()
  from rsr_tf import data as data_lib  # noqa: E402
  from rsr_tf import layers as rsr_layers  # noqa: E402
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
  noisy_models = {name for name, model in loaded.items()
                  if rsr_layers.alphas(model)}
  rows, timers = [], {}
  for name, model in loaded.items():
    print(f"converting and scoring {name} ...", file=sys.stderr, flush=True)
    model_rows, model_timers = measure(name, model, x, y, representative,
                                       batches, threads)
    timers.update({(len(rows) + i, key): call
                   for (i, key), call in model_timers.items()})
    rows += model_rows
  for (i, key), ms in time_all(timers, FLAGS.rounds, FLAGS.runs).items():
    rows[i][key] = ms
  out = FLAGS.output_dir
  os.makedirs(out, exist_ok=True)
  document = "\n".join([
      "# Inference cost against robustness", "",
      f"Generated by `{outputs.provenance()['command']}` at commit "
      f"{outputs.provenance()['git_commit'][:7]}; models: " + ", ".join(
          f"`{n}` = `{p}`" for n, p in models_of.items()) + ".", "",
      f"Accuracy on {len(y)} held-out images of {data.source}, one noise draw "
      "(noise on) per figure; PGD-7 (L-inf 8/255, step 2/255) is crafted on the "
      "Keras model with the same noise setting and scored on each runtime. "
      "Robust accuracy (all attacks) is the Keras model's, from its eval.json.", "",
      accuracy_table(rows, robust, noisy_models), "",
      f"Latency in ms per invoke: the median over {FLAGS.rounds} interleaved "
      f"rounds of the median of {FLAGS.runs} invokes, every call of every "
      "model timed in each round. In brackets: the speed-up over the first "
      "model's first TFLite row in the same column. Keras rows are a traced "
      "call on TensorFlow's own threads, one figure per batch size.", "",
      latency_table(rows, batches, threads), ""])
  outputs.write_text_atomic(os.path.join(out, "inference.md"), document)
  outputs.write_json_atomic(os.path.join(out, "inference.json"), {
      "models": models_of, "evals": evals, "rows": rows, "robust_all": robust,
      "images": len(y), "data": data.source, "rounds": FLAGS.rounds,
      "runs": FLAGS.runs, "provenance": outputs.provenance()})
  points = [(r["model"] + f" ({r['runtime']}, noise {r['noise']})",
             r[f"ms_b1_t{threads[0]}"], r["pgd"]) for r in rows
            if f"ms_b1_t{threads[0]}" in r]
  plotting.latency_vs_accuracy(points, os.path.join(out, "latency_vs_robustness.png"),
                               ylabel="PGD-7 accuracy (%)")
  print(document)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
