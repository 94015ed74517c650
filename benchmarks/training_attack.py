"""How strong is a training attack? Accuracy of a trained model under cheap PGD variants.

A model trained against a weak attack learns to beat that attack and little
more, so before spending a training budget, measure the candidates on a model
of that budget: the strongest attack per gradient step is the one to train on.
Each candidate is PGD with K steps of size S (in /255) from a random start,
or from x (`norm` below), against the true labels; the last, PGD-7 with step
2/255, is the evaluation's yardstick. One pass of the noise per image.

  python benchmarks/training_attack.py --model=results/models/cpu_long/at.keras \
      --image_folder=/data/cifar10 --eval_limit=500 --output=training_attack.json
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rsr_tf  # noqa: E402,F401
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS

# steps:step/255[:norand]; the cpu_long choice, its predecessor, and PGD-7.
DEFAULT_CANDIDATES = ["2:4", "2:6", "2:8", "2:4:norand", "1:8", "3:3", "7:2"]


def define_flags():
  flags.DEFINE_string("model", None, "A trained classifier (.keras, "
                      "SavedModel folder or .tflite with gradients: .keras).")
  _cli.define_data_flags(eval_limit=500, training=False)
  flags.DEFINE_list("candidates", DEFAULT_CANDIDATES, "Attacks as "
                    "steps:step[:norand], step in /255 (norand: start at x).")
  flags.DEFINE_float("eps", 8.0, "L-inf budget, in /255.", lower_bound=0)
  flags.DEFINE_integer("attack_batch", 100, "Images per attack call.",
                       lower_bound=1)
  flags.DEFINE_string("output", None, "Write the results as JSON here.")


def parse_candidate(text, eps):
  """"2:8" -> (2, 8.0, True); "2:4:norand" -> (2, 4.0, False). Raises ValueError."""
  parts = text.split(":")
  if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "norand"):
    raise ValueError(f"--candidates: {text!r} is not steps:step[:norand]")
  try:
    steps, step = int(parts[0]), float(parts[1])
  except ValueError:
    raise ValueError(f"--candidates: {text!r} is not steps:step[:norand]") from None
  if steps < 1 or not 0 < step <= eps:
    raise ValueError(f"--candidates: {text!r} needs steps >= 1 and a step in "
                     f"(0, eps={eps:g}]")
  return steps, step, len(parts) == 2


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.model:
    _cli.fail("--model is required")
  if not os.path.exists(FLAGS.model):
    _cli.fail(f"--model {FLAGS.model!r} does not exist")
  try:
    candidates = [parse_candidate(c, FLAGS.eps) for c in FLAGS.candidates]
    data_config = _cli.data_config_from_flags()
  except ValueError as e:
    _cli.fail(str(e))
  _cli.check_image_folder(data_config.image_folder)
  _cli.quiet_tensorflow_startup()
  import tensorflow as tf  # noqa: E402
  from rsr_tf import attacks  # noqa: E402
  from rsr_tf import classifiers  # noqa: E402
  from rsr_tf import data as data_lib  # noqa: E402
  from rsr_tf import outputs  # noqa: E402

  try:
    target = classifiers.load_classifier(FLAGS.model)
    data = data_lib.load(_cli.shaped_like(data_config, target.input_shape))
  except (ValueError, data_lib.DataError) as e:
    _cli.fail(str(e))
  if not target.differentiable:
    _cli.fail(f"--model {FLAGS.model!r}: gradients are needed (use the .keras file)")
  x = data.test.images.astype("float32") / 255.0
  y = data.test.labels
  eps = FLAGS.eps / 255

  def accuracy(craft):
    right = 0
    for i in range(0, len(y), FLAGS.attack_batch):
      xb, yb = tf.constant(x[i:i + FLAGS.attack_batch]), tf.constant(y[i:i + FLAGS.attack_batch])
      pred = tf.argmax(target.logits_fn(craft(xb, yb)), -1).numpy()
      right += int((pred == yb.numpy()).sum())
    return right / len(y)

  rows = [{"attack": "clean", "gradient_steps": 0,
           "accuracy": accuracy(lambda xb, yb: xb)}]
  for steps, step, rand in candidates:
    name = f"PGD-{steps} step {step:g}/255" + ("" if rand else " from x")
    craft = tf.function(lambda xb, yb, s=steps, a=step, r=rand: attacks.pgd(
        target.logits_fn, xb, yb, eps=eps, step_size=a / 255, steps=s,
        rand_init=r))
    rows.append({"attack": name, "gradient_steps": steps,
                 "accuracy": accuracy(craft)})
    print(f"{name:26s} {100 * rows[-1]['accuracy']:5.1f}%", file=sys.stderr,
          flush=True)
  result = {
      "model": {"path": os.path.abspath(FLAGS.model),
                "sha256": outputs.sha256_of(FLAGS.model)
                if os.path.isfile(FLAGS.model) else None},
      "data": {"source": data.source, "eval_examples": int(len(y))},
      "eps": FLAGS.eps, "rows": rows,
      "provenance": outputs.provenance(),
  }
  outputs.emit_json(result, FLAGS.output)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
