"""What the PNI noise costs at inference: float TFLite latency, noise off and the ways to keep it on.

  python benchmarks/noise_cost.py --model=results/models/cpu/rsr_85.keras \
      --output=benchmarks/noise_cost.json

Variants of one model's float TFLite file, all with one LiteRT thread:
  off          the noise off (a deterministic model)
  full_split   noise on as exported before: conv(x, w) + conv(x, noise), one
               normal drawn per weight, pruned or not
  kept_split   the split, drawing normals for the kept weights only
  kept_fused   what `rsr_tf.export` writes for tflite_float now: one
               conv(x, w + noise), normals for the kept weights only
each timed with LiteRT's default set-up (XNNPACK where it prepares) and with
the builtin kernels alone, at batch 1 and 32. Rounds interleave the variants
so a busy machine slows them alike; the median over rounds is reported, and
ratios are to `off` under the same set-up and batch.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rsr_tf  # noqa: E402,F401
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS
# variant: (noise on, split, kept draw)
VARIANTS = {"off": (False, False, False), "full_split": (True, True, False),
            "kept_split": (True, True, True), "kept_fused": (True, False, True)}


def define_flags():
  flags.DEFINE_string("model", None, "A noisy .keras model (pruned, for the "
                      "kept draw to matter).")
  _cli.define_timing_flags(40, "Timed invokes per latency at batch 1 "
                           "(batch B: runs / B, at least 5).")
  flags.adopt_module_key_flags(_cli)
  flags.DEFINE_string("output", None, "Write the results as JSON here.")


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.model or not os.path.exists(FLAGS.model):
    _cli.fail(f"--model {FLAGS.model!r} does not exist" if FLAGS.model
              else "--model is required")
  batches = _cli.timed_batches()
  _cli.quiet_tensorflow_startup()
  import numpy as np  # noqa: E402
  from rsr_tf import classifiers  # noqa: E402
  from rsr_tf import conversion  # noqa: E402
  from rsr_tf import latency  # noqa: E402
  from rsr_tf import layers as rsr_layers  # noqa: E402
  from rsr_tf import litert  # noqa: E402
  from rsr_tf import outputs  # noqa: E402

  try:
    model = classifiers.load_classifier(FLAGS.model).model
  except ValueError as e:
    _cli.fail(str(e))
  if model is None or not rsr_layers.alphas(model):
    _cli.fail(f"--model {FLAGS.model!r}: a noisy .keras model is needed")
  files = {}
  for name, (noise, split, kept) in VARIANTS.items():
    rsr_layers.set_noise_enabled(model, noise)
    rsr_layers.set_noise_split(model, split)
    rsr_layers.set_kept_draw(model, kept)
    files[name] = conversion.tflite_converter(model).convert()
  rsr_layers.set_noise_split(model, False)
  rsr_layers.set_kept_draw(model, False)
  rsr_layers.set_noise_enabled(model, True)

  resolvers = {"default": None, "builtin": litert.FALLBACK_RESOLVER}
  rows = []
  rng = np.random.default_rng(0)
  for setup, resolver in resolvers.items():
    runners = {}
    for name, content in files.items():
      runners[name] = litert.Model(model_content=content, num_threads=1,
                                   op_resolver=resolver)
    for batch in batches:
      x = rng.uniform(0, 1, (batch,) + tuple(model.input_shape[1:])).astype(np.float32)
      runs = max(5, FLAGS.runs // batch)
      times = latency.interleaved_median_ms(runners, x, FLAGS.rounds, runs)
      off = times["off"]
      for name, ms in times.items():
        rows.append({"variant": name, "setup": setup,
                     "op_resolver": runners[name].op_resolver, "batch": batch,
                     "ms": round(ms, 3), "vs_off": round(ms / off, 2),
                     "normals_per_invoke": litert.random_draws(files[name])})
        print(f"{setup:8s} batch {batch:3d} {name:11s} {ms:8.3f} ms "
              f"{ms / off:5.2f}x off  ({runners[name].op_resolver})",
              file=sys.stderr, flush=True)
  result = {"model": {"path": os.path.abspath(FLAGS.model),
                      "sha256": outputs.sha256_of(FLAGS.model)},
            "threads": 1, "rounds": FLAGS.rounds, "rows": rows,
            "provenance": outputs.provenance()}
  outputs.emit_json(result, FLAGS.output)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
