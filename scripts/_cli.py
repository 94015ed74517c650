"""What every entry point shares: one-line errors and a quiet TensorFlow start."""

import os
import sys

from absl import flags

from rsr_tf import config as config_lib


def fail(message):
  """Prints `<script>: error: message` and exits 2; nothing else is printed."""
  print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl parsing, but a bad flag is one line and exit 2, not a usage dump."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))


def quiet_tensorflow_startup():
  """Imports TensorFlow and finds devices with C++ start-up chatter muted.

  TensorFlow's native logger writes its CUDA/oneDNN notices to fd 2 before
  TF_CPP_MIN_LOG_LEVEL applies, burying the one line a user needs to read.
  """
  import rsr_tf  # noqa: F401  (Keras 2 switch first)
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    import tensorflow as tf  # noqa: F401
    tf.config.list_physical_devices()
  finally:
    os.dup2(saved, 2)
    os.close(devnull)
    os.close(saved)


def define_data_flags(train_limit=0, eval_limit=0, training=True, augment=True):
  """The data flags every script shares, so one data source means one spelling.

  Args:
    train_limit: default of --train_limit.
    eval_limit: default of --eval_limit.
    training: False leaves out --train_limit and --augment (the script reads
      only held-out data).
    augment: False leaves out --augment (nothing is trained).
  """
  flags.DEFINE_string("dataset", "cifar10", "tfds dataset name (default source).")
  flags.DEFINE_string("image_folder", None,
                      "Local copy laid out as DIR/train/<class>/, DIR/test/<class>/; "
                      "used instead of tfds.")
  flags.DEFINE_bool("embedded_sample", False,
                    "Use the 2,000/500-image CIFAR-10 sample shipped in the "
                    "package (offline).")
  flags.DEFINE_string("data_dir", None, "tfds data_dir.")
  flags.DEFINE_bool("skip_bad_images", False, "--image_folder: leave out files "
                    "that do not decode (counted) instead of stopping at the "
                    "first, named.")
  flags.DEFINE_list("image_size", None, "H,W: resize every image to this size. "
                    "Without it the images keep their size (an image folder's "
                    "must all share one).")
  flags.DEFINE_enum("channels", None, ["1", "3"], "Channels of the images the "
                    "model sees: 3 converts grayscale to RGB, 1 converts colour "
                    "to luminance. Default: the data's own (tfds declares it; "
                    "image folders and the embedded sample are RGB).")
  if training:
    flags.DEFINE_integer("train_limit", train_limit, "First N training "
                         "examples, class-balanced (0: all).", lower_bound=0)
  flags.DEFINE_integer("eval_limit", eval_limit, "First N eval examples, "
                       "class-balanced (0: all).", lower_bound=0)
  flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
  if training and augment:
    flags.DEFINE_bool("augment", True, "Pad-4 random crop and horizontal flip.")
  flags.DEFINE_integer("seed", 0, "Random seed.")


def data_config_from_flags():
  """The DataConfig the data flags describe (unvalidated).

  Scripts that read only held-out data get one batch of training data.
  """
  FLAGS = flags.FLAGS
  train_limit = FLAGS.train_limit if "train_limit" in FLAGS else FLAGS.batch_size
  image_size = None
  if FLAGS.image_size:
    try:
      image_size = tuple(int(d) for d in FLAGS.image_size)
    except ValueError:
      raise config_lib.ConfigError(
          f"--image_size must be H,W integers, got {','.join(FLAGS.image_size)}")
    if len(image_size) != 2:
      raise config_lib.ConfigError(
          f"--image_size must be H,W, got {','.join(FLAGS.image_size)}")
  return config_lib.DataConfig(
      image_size=image_size,
      channels=int(FLAGS.channels) if FLAGS.channels else None,
      dataset=FLAGS.dataset, image_folder=FLAGS.image_folder,
      embedded_sample=FLAGS.embedded_sample, data_dir=FLAGS.data_dir,
      train_limit=train_limit, eval_limit=FLAGS.eval_limit,
      batch_size=FLAGS.batch_size, augment=FLAGS.augment if "augment" in FLAGS
      else False, seed=FLAGS.seed, skip_bad_images=FLAGS.skip_bad_images)


def define_timing_flags(runs, runs_help):
  """--batches, --rounds and --runs, the latency benchmarks' timing flags.

  Args:
    runs: default of --runs.
    runs_help: what one run is in that benchmark.
  """
  flags.DEFINE_list("batches", ["1", "32"], "Batch sizes timed.")
  flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds: every call of "
                       "every model is timed once per round, and the median "
                       "over the rounds is reported.", lower_bound=1)
  flags.DEFINE_integer("runs", runs, runs_help, lower_bound=1)


def timed_batches():
  """--batches as positive integers, or one line and exit 2."""
  try:
    batches = [int(b) for b in flags.FLAGS.batches]
  except ValueError:
    batches = []
  if not batches or min(batches) < 1:
    fail(f"--batches must be positive integers, got {','.join(flags.FLAGS.batches)}")
  return batches


def check_image_folder(folder):
  if folder and not os.path.isdir(folder):
    fail(f"--image_folder {folder!r} does not exist or is not a directory")


def check_output_dir(directory):
  from rsr_tf import outputs  # noqa: E402  (light: no TensorFlow import)
  try:
    outputs.check_writable(directory)
  except OSError as e:
    fail(str(e))


def shaped_like(data_config, input_shape):
  """`data_config` with the model's image size and channels where unset.

  Evaluation and export read the data the model was made for: images of
  another size are resized to its input, and the channels converted, unless
  --image_size or --channels say otherwise.
  """
  import dataclasses  # noqa: E402
  height, width, channels = (int(d) for d in input_shape)
  return dataclasses.replace(
      data_config, image_size=data_config.image_size or (height, width),
      channels=data_config.channels or channels)
