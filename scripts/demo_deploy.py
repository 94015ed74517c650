r"""The quick start's last step: held-out images classified by the TensorFlow-free runner.

Example (what `make demo` runs after training and exporting):
  python scripts/demo_deploy.py --tflite=runs/demo/export/model_int8.tflite \
    --image_dir=runs/demo/images --count=10

Writes `--count` test images of the embedded CIFAR-10 sample (class-balanced;
training never sees the test split) as PNG files named after their true
class, classifies them with `export/runner.py` in a fresh interpreter, as a
device without TensorFlow would, then prints the file's size and the runner's
median batch-1 latency.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import rsr_tf  # noqa: E402,F401  (before TensorFlow: selects Keras 2)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS
RUNNER = os.path.join(ROOT, "export", "runner.py")


def define_flags():
  """Every flag of the demo's deployment step, with its range."""
  flags.DEFINE_string("tflite", None, "The .tflite file to deploy (e.g. "
                      "model_int8.tflite from scripts/export.py).")
  flags.DEFINE_string("image_dir", None, "Folder the PNG files are written to.")
  flags.DEFINE_integer("count", 10, "Held-out images to classify.",
                       lower_bound=1, upper_bound=500)
  flags.DEFINE_integer("latency_runs", 50, "Batch-1 invokes; the median is "
                       "the latency.", lower_bound=1)


def _write_images(image_dir, count, channels):
  """Writes `count` test images as PNG; returns [(path, true class name)]."""
  from PIL import Image  # noqa: E402
  from rsr_tf import data as data_lib  # noqa: E402
  # One training image per class: the smallest load; only the test split is used.
  sample = data_lib.load_embedded_sample(train_limit=10, eval_limit=count,
                                         channels=channels)
  os.makedirs(image_dir, exist_ok=True)
  written = []
  for i, (pixels, label) in enumerate(zip(sample.test.images,
                                          sample.test.labels)):
    name = sample.class_names[label]
    path = os.path.join(image_dir, f"{i:02d}_{name}.png")
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)
    written.append((path, name))
  return written


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  for name in ("tflite", "image_dir"):
    if not FLAGS[name].value:
      _cli.fail(f"--{name} is required")
  if not os.path.isfile(FLAGS.tflite):
    _cli.fail(f"--tflite {FLAGS.tflite!r} does not exist or is not a file")
  _cli.check_output_dir(FLAGS.image_dir)
  from export import runner  # noqa: E402  (numpy, Pillow, LiteRT only)
  from rsr_tf import latency  # noqa: E402
  try:
    with runner.QuietNativeStderr():  # LiteRT's delegate notices
      classifier = runner.Classifier(FLAGS.tflite, num_threads=1)
  except runner.RunnerError as e:
    _cli.fail(str(e))
  _cli.quiet_tensorflow_startup()
  images = _write_images(FLAGS.image_dir, FLAGS.count,
                         classifier.image_shape[-1])

  command = [sys.executable, RUNNER, FLAGS.tflite] + [p for p, _ in images]
  shown = ["python", os.path.relpath(RUNNER), FLAGS.tflite,
           os.path.join(FLAGS.image_dir, "*.png")]
  print(f"$ {' '.join(shown)}", flush=True)
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  sys.stdout.write(result.stdout)
  if result.returncode:
    sys.stderr.write(result.stderr)
    sys.exit(result.returncode)
  predicted = [line.split("\t")[1] for line in result.stdout.splitlines()]
  right = sum(p == name for p, (_, name) in zip(predicted, images))

  one_image = runner.load_input([images[0][0]], classifier.image_shape)
  ms = latency.median_ms(classifier.logits, one_image, FLAGS.latency_runs)
  print(f"deployed: {FLAGS.tflite}, "
        f"{os.path.getsize(FLAGS.tflite) / 1024:.1f} KiB")
  print(f"runner: {right} of {len(images)} held-out images right (each file "
        f"is named after its true class); {ms:.2f} ms per image (median of "
        f"{FLAGS.latency_runs} batch-1 invokes, 1 thread, "
        f"{classifier.op_resolver})")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
