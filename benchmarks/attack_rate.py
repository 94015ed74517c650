"""Attack throughput: gradient steps per second of the evaluation's attacks.

One "gradient step" is one forward and backward pass of one image through the
model with respect to its input, so an EOT step over k noise draws counts k.
Measured in one run, on one noisy model, for:
  pgd_train   the training step's PGD (CleverHans, inside the train step's
              tf.function, as RSRTrainer crafts it)
  pgd_eval    the evaluation's PGD craft (registry.pgd_craft)
  apgd_eot    APGD-CE with EOT (rsr_tf.apgd, the whole loop in one tf.function)
  square      Square queries (forward passes only) per second
and the time --preset=aa_rand would take on --images images at those rates.

  python benchmarks/attack_rate.py --output=attack_rate.json
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rsr_tf  # noqa: E402,F401
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("model", "resnet20", "Built-in network (noise on, "
                      "untrained: speed does not depend on the weights).")
  flags.DEFINE_integer("batch", 128, "Images per call.", lower_bound=1)
  flags.DEFINE_integer("steps", 10, "Attack steps per timed call.", lower_bound=1)
  flags.DEFINE_integer("eot_samples", 4, "APGD's noise draws per step.",
                       lower_bound=1)
  flags.DEFINE_integer("queries", 50, "Square queries per timed call.",
                       lower_bound=1)
  flags.DEFINE_integer("repeats", 3, "Timed calls; the median is reported.",
                       lower_bound=1)
  flags.DEFINE_integer("images", 1000, "Images of the aa_rand estimate.",
                       lower_bound=1)
  flags.DEFINE_string("output", None, "Write the results as JSON here.")


def _median_seconds(fn, repeats):
  fn()  # traces and warms up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  _cli.quiet_tensorflow_startup()
  import numpy as np  # noqa: E402
  import tensorflow as tf  # noqa: E402
  from rsr_tf import apgd  # noqa: E402
  from rsr_tf import attacks  # noqa: E402
  from rsr_tf import config as config_lib  # noqa: E402
  from rsr_tf import models  # noqa: E402
  from rsr_tf import outputs  # noqa: E402
  from rsr_tf import registry  # noqa: E402
  from rsr_tf import square  # noqa: E402

  model = models.build(FLAGS.model, 10, noise="channel", input_shape=(32, 32, 3))
  model_fn = attacks.inference_fn(model)
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (FLAGS.batch, 32, 32, 3)).astype(np.float32)
  y = rng.integers(0, 10, FLAGS.batch).astype(np.int64)
  xt, yt = tf.constant(x), tf.constant(y)
  n, k, eps = FLAGS.batch, FLAGS.steps, 8 / 255

  @tf.function
  def pgd_train(images, labels):
    return attacks.pgd(model_fn, images, labels, eps=eps, step_size=2 / 255,
                       steps=k)

  ctx = registry.Context(model_fn, None, config_lib.EvalConfig(), True)
  pgd_eval = registry.pgd_craft(ctx, k, restarts=1)
  rates = {
      "pgd_train": n * k / _median_seconds(lambda: pgd_train(xt, yt).numpy(),
                                           FLAGS.repeats),
      "pgd_eval": n * k / _median_seconds(lambda: pgd_eval(xt, yt).numpy(),
                                          FLAGS.repeats),
      "apgd_eot": n * k * FLAGS.eot_samples / _median_seconds(
          lambda: apgd.apgd(model_fn, x, y, eps, steps=k,
                            eot_samples=FLAGS.eot_samples, batch_size=n),
          FLAGS.repeats),
      # Square stops early on fooled images; eps = 0 fools none, so every
      # query runs: the full cost per query.
      "square_queries": n * FLAGS.queries / _median_seconds(
          lambda: square.square(model_fn, x, y, 0.0, queries=FLAGS.queries,
                                batch_size=n), FLAGS.repeats),
  }
  # aa_rand: APGD-CE and APGD-DLR, 100 steps x 20 draws; DLR runs on the
  # images APGD-CE left robust (about a fifth for these models: an estimate).
  aa_rand_hours = FLAGS.images * 100 * 20 * (1 + 0.2) / rates["apgd_eot"] / 3600
  result = {
      "gradient_steps_per_second": {k_: round(v, 1) for k_, v in rates.items()},
      "apgd_eot_vs_training_pgd": round(rates["apgd_eot"] / rates["pgd_train"], 3),
      "aa_rand_estimate_hours": {"images": FLAGS.images,
                                 "hours": round(aa_rand_hours, 2)},
      "settings": {"model": FLAGS.model, "batch": n, "steps": k,
                   "eot_samples": FLAGS.eot_samples, "queries": FLAGS.queries},
      "provenance": outputs.provenance(),
  }
  outputs.emit_json(result, FLAGS.output)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
