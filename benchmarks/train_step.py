"""Training throughput: where an RSR step's time goes, against a bare PGD step.

Measures images/s (median of --repeats, after warm-up) for:
  clean          a plain cross-entropy step (no noise, no wrappers, no L1)
  pgd_only       PGD-k generation alone, inference mode
  bare_adv       a bare PGD-k adversarial step (no noise, no wrappers, no L1)
  rsr_dense      the RSR step before pruning: noise + L1 + PGD-k (train.py phase 1)
  rsr_pruned     the RSR step as fine-tuning runs it: + tfmot wrappers (phase 2)
  data           the tf.data training pipeline alone
and prints each against bare_adv, with effective GFLOP/s.

  python benchmarks/train_step.py --mixed_precision=mixed_bfloat16 --output=bench.json
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rsr_tf  # noqa: E402,F401
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from rsr_tf import config as config_lib  # noqa: E402
from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_enum("model", "resnet20", list(config_lib.MODEL_NAMES), "Network.")
  flags.DEFINE_integer("batch", 128, "Batch size.", lower_bound=1)
  flags.DEFINE_integer("pgd_steps", 7, "PGD steps.", lower_bound=1)
  flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.",
                       lower_bound=1)
  flags.DEFINE_integer("steps_per_repeat", 3, "Train steps per timed repeat.",
                       lower_bound=1)
  flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing).", lower_bound=1)
  flags.DEFINE_bool("jit_compile", False, "XLA-compile every step.")
  flags.DEFINE_enum("mixed_precision", "none", list(config_lib.PRECISIONS),
                    "Keras mixed-precision policy.")
  flags.DEFINE_list("steps", ["clean", "pgd_only", "bare_adv", "rsr_dense",
                              "rsr_pruned", "data"], "Which steps to time.")
  flags.DEFINE_string("image_folder", None, "Image folder for the data-pipeline "
                      "timing (default: the embedded sample).")
  flags.DEFINE_bool("torch_baseline", False, "Also time the eager PyTorch PNI "
                    "step (benchmarks/torch_pni_step.py; needs torch), fp32 and "
                    "bf16 autocast, in this same run.")
  flags.DEFINE_string("output", None, "Write the results as JSON here.")


def _forward_flops(model):
  """Multiply-adds x 2 of one image's forward pass (conv and dense layers)."""
  from rsr_tf import layers as rsr_layers  # noqa: E402
  total = 0
  for layer in rsr_layers.noisy_layers(model):
    kernel = layer.kernel.shape
    if len(kernel) == 4:
      out_h, out_w = layer.output_shape[1:3]
      total += 2 * out_h * out_w * kernel[0] * kernel[1] * kernel[2] * kernel[3]
    else:
      total += 2 * kernel[0] * kernel[1]
  return total


# Forward-pass equivalents per image: a backward pass costs about two.
def _passes(step, k):
  return {"clean": 3, "pgd_only": 3 * k, "bare_adv": 6 + 3 * k,
          "rsr_dense": 6 + 3 * k, "rsr_pruned": 6 + 3 * k, "data": 0}[step]


def _time(fn, warmup, repeats, steps_per_repeat):
  for _ in range(warmup):
    fn()
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps_per_repeat):
      fn()
    seconds.append((time.perf_counter() - start) / steps_per_repeat)
  return seconds


def _torch_baseline(batch):
  """Runs torch_pni_step.py in a subprocess (fp32, then bf16 autocast)."""
  import subprocess  # noqa: E402
  import tempfile  # noqa: E402
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "torch_pni_step.py")
  found = {}
  for extra in ([], ["--bf16"]):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
      print(f"timing torch {' '.join(extra) or 'fp32'} ...", file=sys.stderr,
            flush=True)
      result = subprocess.run([sys.executable, script, f"--batch={batch}",
                               f"--repeats={FLAGS.repeats}",
                               f"--steps_per_repeat={FLAGS.steps_per_repeat}",
                               f"--output={out.name}", *extra],
                              capture_output=True, text=True)
      if result.returncode:
        _cli.fail("the PyTorch baseline failed (pip install torch==2.13.0?): "
                  + (result.stderr.strip().splitlines() or ["?"])[-1])
      found.update(json.load(open(out.name)))
  return found


def main(argv):
  del argv
  _cli.quiet_tensorflow_startup()
  import tensorflow as tf  # noqa: E402
  import tf_keras as keras  # noqa: E402
  from rsr_tf import attacks, data, models, outputs, pipelines, pruning  # noqa: E402
  from rsr_tf import training  # noqa: E402

  keras.utils.set_random_seed(0)
  keras.mixed_precision.set_global_policy(
      "float32" if FLAGS.mixed_precision == "none" else FLAGS.mixed_precision)
  b, k = FLAGS.batch, FLAGS.pgd_steps
  x = tf.random.uniform((b, 32, 32, 3))
  y = tf.random.uniform((b,), 0, 10, dtype=tf.int64)
  eps, step_size = 8 / 255, 2 / 255

  def ce(labels, logits):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels, tf.cast(logits, tf.float32)))

  def bare_model():
    return models.build(FLAGS.model, noise="none")

  def plain_step(model, adversarial):
    optimizer = training.sgd(0.01, 0.9)
    model_fn = attacks.inference_fn(model)

    @tf.function(jit_compile=FLAGS.jit_compile)
    def step(x, y):
      with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = ce(y, logits)
        if adversarial:
          with tape.stop_recording():
            x_adv = attacks.pgd(model_fn, x, tf.argmax(logits, -1), eps=eps,
                                step_size=step_size, steps=k)
          loss = 0.5 * loss + 0.5 * ce(y, model(x_adv, training=True))
      grads = tape.gradient(loss, model.trainable_variables)
      optimizer.apply_gradients(zip(grads, model.trainable_variables))
      return loss
    return lambda: step(x, y).numpy()

  def rsr_step(pruned):
    model = models.build(FLAGS.model, noise="channel")
    if pruned:
      model = pruning.prune_global(model, 0.85)
    trainer = training.RSRTrainer(model, eps=eps, step_size=step_size, steps=k,
                                  lambda_l1=5e-6, weight_decay=3e-4)
    trainer.compile(optimizer=training.sgd(0.01, 0.9),
                    jit_compile=FLAGS.jit_compile)
    if pruned:  # what UpdatePruningStep.on_train_begin does
      for callback in pruning.callbacks():
        callback.set_model(trainer)
        callback.on_train_begin()
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    train_function = trainer.make_train_function()
    return lambda: train_function(iterator)["loss"].numpy()

  def pgd_only():
    model_fn = attacks.inference_fn(bare_model())
    craft = tf.function(lambda x, y: attacks.pgd(
        model_fn, x, y, eps=eps, step_size=step_size, steps=k),
        jit_compile=FLAGS.jit_compile)
    return lambda: craft(x, y).numpy()

  def data_only():
    config = config_lib.DataConfig(image_folder=FLAGS.image_folder,
                                   embedded_sample=not FLAGS.image_folder)
    split = data.load(config).train
    iterator = iter(pipelines.train_pipeline(split, b).repeat())
    return lambda: next(iterator)[0].numpy()

  makers = {"clean": lambda: plain_step(bare_model(), False),
            "pgd_only": pgd_only,
            "bare_adv": lambda: plain_step(bare_model(), True),
            "rsr_dense": lambda: rsr_step(False),
            "rsr_pruned": lambda: rsr_step(True),
            "data": data_only}
  flops = _forward_flops(bare_model())
  results = {}
  for name in FLAGS.steps:
    if name not in makers:
      _cli.fail(f"--steps: unknown step {name!r}; known: {', '.join(makers)}")
    print(f"timing {name} ...", file=sys.stderr, flush=True)
    seconds = _time(makers[name](), FLAGS.warmup, FLAGS.repeats,
                    FLAGS.steps_per_repeat)
    median = statistics.median(seconds)
    results[name] = {
        "images_per_second": b / median,
        "seconds_per_step_median": median,
        "seconds_per_step_all": seconds,
        "forward_passes_per_image": _passes(name, k),
        "effective_gflops": flops * _passes(name, k) * b / median / 1e9,
    }

  if FLAGS.torch_baseline:
    results.update(_torch_baseline(b))
  base = results.get("bare_adv", {}).get("images_per_second")
  header = (f"{'step':<18} {'images/s':>10} {'x bare_adv':>11} {'GFLOP/s':>9}"
            f"   ({FLAGS.model}, batch {b}, PGD-{k}, {FLAGS.mixed_precision}, "
            f"jit_compile={FLAGS.jit_compile})")
  print(header)
  print("-" * len(header))
  for name, r in results.items():
    ratio = f"{r['images_per_second'] / base:.2f}" if base else "n/a"
    gflops = r.get("effective_gflops")
    print(f"{name:<18} {r['images_per_second']:>10.1f} {ratio:>11} "
          f"{'' if gflops is None else f'{gflops:.1f}':>9}")
  for torch_name in ("torch_eager_fp32", "torch_eager_bf16"):
    if torch_name in results and "rsr_dense" in results:
      print(f"rsr_dense / {torch_name}: "
            f"{results['rsr_dense']['images_per_second'] / results[torch_name]['images_per_second']:.2f}")
  report = {"results": results, "forward_gflop_per_image": flops / 1e9,
            "settings": {"model": FLAGS.model, "batch": b, "pgd_steps": k,
                         "mixed_precision": FLAGS.mixed_precision,
                         "jit_compile": FLAGS.jit_compile,
                         "repeats": FLAGS.repeats,
                         "steps_per_repeat": FLAGS.steps_per_repeat,
                         "cpu_count": os.cpu_count()},
            "device": [d.device_type for d in tf.config.list_physical_devices()],
            "provenance": outputs.provenance()}
  if FLAGS.output:
    outputs.write_json_atomic(FLAGS.output, report)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
