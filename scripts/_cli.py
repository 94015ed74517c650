"""What every entry point shares: one-line errors and a quiet TensorFlow start."""

import os
import sys

from absl import flags


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
