"""How much faster is a channel-pruned model? Float TFLite latency against the fraction of MACs removed.

Speed does not depend on the weights' values, so this needs no training:
each fraction is planned (`rsr_tf.channels.plan`) and rebuilt on the given
model, converted to float TFLite with the noise off, and timed against the
unpruned model with LiteRT's default set-up (XNNPACK), in rounds that
interleave the models so a busy machine slows them alike.

  python benchmarks/channel_speed.py --model=results/models/cpu/rsr_85.keras \
      --fractions=0.3,0.45,0.6,0.69 --output=benchmarks/channel_speed.json
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rsr_tf  # noqa: E402,F401
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("model", None, "A .keras model (a built-in name such as "
                      "resnet20 also works: untrained weights time the same).")
  flags.DEFINE_list("fractions", ["0.3", "0.45", "0.6", "0.69"],
                    "Fractions of the conv/dense MACs to remove.")
  flags.DEFINE_integer("multiple", 8, "Kept widths are multiples of this.",
                       lower_bound=1)
  flags.DEFINE_integer("threads", 1, "LiteRT threads.", lower_bound=1)
  _cli.define_timing_flags(40, "Invokes per latency at batch 1 (batch B: "
                           "runs / B, at least 5).")
  flags.adopt_module_key_flags(_cli)
  flags.DEFINE_string("output", None, "Write the results as JSON here.")


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.model:
    _cli.fail("--model is required")
  try:
    fractions = [float(f) for f in FLAGS.fractions]
  except ValueError:
    _cli.fail(f"--fractions must be numbers, got {','.join(FLAGS.fractions)}")
  batches = _cli.timed_batches()
  if not all(0 < f < 1 for f in fractions):
    _cli.fail(f"--fractions must be in (0, 1), got {FLAGS.fractions}")
  _cli.quiet_tensorflow_startup()
  import numpy as np  # noqa: E402
  from rsr_tf import channels  # noqa: E402
  from rsr_tf import config as config_lib  # noqa: E402
  from rsr_tf import conversion  # noqa: E402
  from rsr_tf import latency  # noqa: E402
  from rsr_tf import layers as rsr_layers  # noqa: E402
  from rsr_tf import litert  # noqa: E402
  from rsr_tf import models  # noqa: E402
  from rsr_tf import outputs  # noqa: E402

  if FLAGS.model in config_lib.MODEL_NAMES:
    model = models.build(FLAGS.model, 10, noise="none", input_shape=(32, 32, 3))
  elif os.path.exists(FLAGS.model):
    model = models.load(FLAGS.model)
  else:
    _cli.fail(f"--model {FLAGS.model!r} is neither a file nor one of "
              f"{', '.join(config_lib.MODEL_NAMES)}")
  rsr_layers.set_noise_enabled(model, False)

  def tflite(m):
    return conversion.convert_tflite(m, "tflite_float", False, None, False)[0]

  variants = {"unpruned": {"content": tflite(model), "macs_removed": 0.0,
                           "params": int(model.count_params())}}
  for fraction in fractions:
    try:
      plan = channels.plan(model, fraction, multiple=FLAGS.multiple)
    except ValueError as e:
      _cli.fail(str(e))
    narrow = channels.rebuild(model, plan)
    rsr_layers.set_noise_enabled(narrow, False)
    variants[f"{fraction:g}"] = {"content": tflite(narrow),
                                 "macs_removed": plan.macs_removed,
                                 "params": plan.params_after,
                                 "widths": {k: list(v) for k, v in plan.widths.items()}}
  rows = []
  rng = np.random.default_rng(0)
  for batch in batches:
    x = rng.uniform(0, 1, (batch,) + tuple(model.input_shape[1:])).astype(np.float32)
    runners = {k: litert.Model(model_content=v["content"], num_threads=FLAGS.threads)
               for k, v in variants.items()}
    times = latency.interleaved_median_ms(runners, x, FLAGS.rounds,
                                          max(5, FLAGS.runs // batch))
    base = times["unpruned"]
    for k, ms in times.items():
      rows.append({"variant": k, "batch": batch, "ms": round(ms, 3),
                   "speedup": round(base / ms, 2),
                   "macs_removed": round(variants[k]["macs_removed"], 4),
                   "params": variants[k]["params"],
                   "op_resolver": runners[k].op_resolver})
      print(f"batch {batch:3d}  {k:9s} MACs removed "
            f"{100 * variants[k]['macs_removed']:5.1f}%  {ms:8.3f} ms  "
            f"{base / ms:5.2f}x  ({runners[k].op_resolver})", file=sys.stderr,
            flush=True)
  result = {"model": FLAGS.model, "multiple": FLAGS.multiple,
            "threads": FLAGS.threads, "rounds": FLAGS.rounds, "rows": rows,
            "widths": {k: v.get("widths") for k, v in variants.items()},
            "provenance": outputs.provenance(argv)}
  outputs.emit_json(result, FLAGS.output)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
