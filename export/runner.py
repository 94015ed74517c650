"""Classify images with an exported .tflite model, without TensorFlow.

Needs only numpy, Pillow and ai-edge-litert; copy this one file next to your
code. In Python:

  from runner import classify
  labels, probabilities = classify("model_int8.tflite", ["cat.jpg", "ship.png"])

From a shell, with image files or a .npy batch (float32 [N, H, W, C] in [0, 1],
the model's own input shape):

  python runner.py model_int8.tflite cat.jpg ship.png
  python runner.py model_int8.tflite batch.npy --labels labels.txt
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError
from ai_edge_litert import interpreter as litert

# Images per invoke. A noisy model draws fresh weight noise on every invoke.
BATCH_SIZE = 64
LABELS_FILE = "labels.txt"


class RunnerError(ValueError):
  """Bad model or input; the message is one line for the user."""


def _first_line(error):
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


class Classifier:
  """A .tflite image classifier in a LiteRT interpreter.

  XNNPACK, LiteRT's default delegate, cannot prepare sparse-encoded weights;
  when the default set-up fails, the builtin kernels without default
  delegates are used instead. `op_resolver` says which ran.

  Args:
    model_path: the .tflite file.
    num_threads: interpreter threads; None lets LiteRT choose.

  Raises:
    RunnerError: missing or corrupt file, or a model that does not take
      float32 [N, H, W, C] images with C = 1 (grayscale) or 3 (RGB).
  """

  def __init__(self, model_path, num_threads=None):
    if not os.path.isfile(model_path):
      raise RunnerError(f"model file {model_path} does not exist")
    self.model_path = model_path
    self.op_resolver = "AUTO"
    try:
      self._interpreter = self._build(model_path, num_threads,
                                      litert.OpResolverType.AUTO)
    except (RuntimeError, ValueError) as default_error:
      try:
        self._interpreter = self._build(
            model_path, num_threads,
            litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
      except (RuntimeError, ValueError):
        raise RunnerError(f"{model_path} is not a usable .tflite model: "
                          f"{_first_line(default_error)}") from None
      self.op_resolver = "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
    self._input = self._interpreter.get_input_details()[0]
    self._output = self._interpreter.get_output_details()[0]
    signature = [int(d) for d in self._input["shape_signature"]]
    if (len(signature) != 4 or signature[-1] not in (1, 3) or
        self._input["dtype"] != np.float32):
      raise RunnerError(f"{model_path} takes {np.dtype(self._input['dtype'])} "
                        f"{signature}; expected float32 images [N, H, W, C] "
                        "with C = 1 or 3")
    self.image_shape = tuple(signature[1:])
    self._batch = int(self._input["shape"][0])

  @staticmethod
  def _build(model_path, num_threads, resolver):
    interpreter = litert.Interpreter(model_path=model_path,
                                     num_threads=num_threads,
                                     experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter

  def logits(self, images):
    """Raw model outputs [N, classes] for a checked float32 batch."""
    images = check_images(images, self.image_shape)
    return np.concatenate([self._invoke(images[i:i + BATCH_SIZE])
                           for i in range(0, len(images), BATCH_SIZE)])

  def _invoke(self, batch):
    if batch.shape[0] != self._batch:
      self._interpreter.resize_tensor_input(self._input["index"], batch.shape)
      self._interpreter.allocate_tensors()
      self._batch = batch.shape[0]
    self._interpreter.set_tensor(self._input["index"],
                                 np.ascontiguousarray(batch))
    self._interpreter.invoke()
    return self._interpreter.get_tensor(self._output["index"]).copy()

  def __call__(self, images):
    """(labels int64 [N], probabilities float32 [N, classes]) for `images`.

    `images` is a float32 array [N, H, W, 3] in [0, 1], a .npy file holding
    one, or a list of image file paths.
    """
    logits = self.logits(load_input(images, self.image_shape))
    return np.argmax(logits, axis=-1).astype(np.int64), softmax(logits)


def classify(model_path, images, num_threads=None):
  """Classifies `images` with the .tflite model at `model_path`.

  Args:
    model_path: a .tflite file from scripts/export.py.
    images: a float32 array [N, H, W, C] (the model's input shape) with
      values in [0, 1], a path to a .npy file holding one, or a list of
      image file paths (any size, any mode Pillow reads; converted to RGB or
      grayscale and resized to the model's input).
    num_threads: interpreter threads; None lets LiteRT choose.

  Returns:
    (labels, probabilities): class indices int64 [N] and softmax
    probabilities float32 [N, classes].

  Raises:
    RunnerError: a bad model file or bad input, with a one-line message.
  """
  return Classifier(model_path, num_threads)(images)


def softmax(logits):
  shifted = logits - np.max(logits, axis=-1, keepdims=True)
  exp = np.exp(shifted)
  return (exp / np.sum(exp, axis=-1, keepdims=True)).astype(np.float32)


def check_images(images, image_shape=(32, 32, 3)):
  """Returns `images` if it is a float32 [N, H, W, C] batch in [0, 1].

  Raises:
    RunnerError: wrong type, dtype or shape, or values outside [0, 1].
  """
  if not isinstance(images, np.ndarray):
    raise RunnerError(f"images must be a numpy array, got "
                      f"{type(images).__name__}")
  expected = "[N, " + ", ".join(str(d) for d in image_shape) + "]"
  if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape):
    raise RunnerError(f"images must have shape {expected}, got "
                      f"{list(images.shape)}")
  if images.shape[0] == 0:
    raise RunnerError("images is an empty batch (N = 0)")
  if images.dtype != np.float32:
    raise RunnerError(f"images must be float32 in [0, 1], got {images.dtype}; "
                      f"for uint8 pixels use (images / 255).astype('float32')")
  if not np.all(np.isfinite(images)):
    raise RunnerError("images contain NaN or infinite values")
  low, high = float(images.min()), float(images.max())
  if low < 0.0 or high > 1.0:
    raise RunnerError(f"image values must lie in [0, 1], got {low:g} to "
                      f"{high:g}")
  return images


def load_input(images, image_shape=(32, 32, 3)):
  """An array, a .npy path or image paths -> an array, not yet checked."""
  if isinstance(images, np.ndarray):
    return images
  if isinstance(images, (str, os.PathLike)):
    if os.fspath(images).endswith(".npy"):
      return load_npy(images)
    images = [images]
  if not isinstance(images, (list, tuple)):
    raise RunnerError(f"images must be an array, a .npy path or a list of "
                      f"image paths, got {type(images).__name__}")
  if not images:
    raise RunnerError("no images given")
  return np.stack([load_image(path, image_shape) for path in images])


def load_npy(path):
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise RunnerError(f"cannot read {path} as a .npy array: "
                      f"{_first_line(e)}") from None


def load_image(path, image_shape=(32, 32, 3)):
  """One image file as float32 [H, W, C] in [0, 1], converted and resized.

  C = 1 reads the image as grayscale (Pillow's "L": ITU-R 601 luminance),
  C = 3 as RGB.
  """
  height, width, channels = image_shape
  try:
    with Image.open(path) as image:
      image = image.convert("L" if channels == 1 else "RGB")
      if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
      pixels = np.asarray(image, dtype=np.uint8).reshape(height, width,
                                                         channels)
  except (OSError, UnidentifiedImageError) as e:
    raise RunnerError(f"cannot read image {path}: {_first_line(e)}") from None
  return pixels.astype(np.float32) / 255.0


def read_labels(path):
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


class QuietNativeStderr:
  """Mutes fd 2 while LiteRT loads, so a CLI error stays one line.

  LiteRT's native logger prints notices such as "INFO: Created TensorFlow Lite
  XNNPACK delegate for CPU." straight to fd 2; Python exceptions still reach
  the caller as exceptions.
  """

  def __enter__(self):
    sys.stderr.flush()
    self._saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)

  def __exit__(self, *exc):
    os.dup2(self._saved, 2)
    os.close(self._saved)


def main(argv=None):
  """Command line: prints one line per image (name, class, probability)."""
  parser = argparse.ArgumentParser(
      prog="runner.py", description="Classify images with a .tflite model "
      "(no TensorFlow needed).")
  parser.add_argument("model", help="the .tflite file")
  parser.add_argument("inputs", nargs="+",
                      help="image files, or one .npy file holding float32 "
                           "[N, H, W, C] in [0, 1] (the model's input shape)")
  parser.add_argument("--labels", help="class names, one a line (default: "
                      f"{LABELS_FILE} beside the model, if there)")
  parser.add_argument("--num_threads", type=int, default=None)
  args = parser.parse_args(argv)
  try:
    npy = [p for p in args.inputs if p.endswith(".npy")]
    if npy and len(args.inputs) > 1:
      raise RunnerError("give either one .npy file or image files, not both")
    with QuietNativeStderr():
      classifier = Classifier(args.model, args.num_threads)
    labels, probabilities = classifier(npy[0] if npy else list(args.inputs))
    names = _label_names(args.labels, args.model, probabilities.shape[1])
  except RunnerError as e:
    print(f"runner.py: error: {e}", file=sys.stderr)
    return 2
  shown = ([f"{npy[0]}[{i}]" for i in range(len(labels))] if npy
           else args.inputs)
  for name, label, probs in zip(shown, labels, probabilities):
    print(f"{name}\t{names[label] if names else label}\t{probs[label]:.4f}")
  return 0


def _label_names(labels_path, model_path, num_classes):
  if labels_path is None:
    beside = os.path.join(os.path.dirname(os.path.abspath(model_path)),
                          LABELS_FILE)
    if not os.path.isfile(beside):
      return None
    labels_path = beside
  try:
    names = read_labels(labels_path)
  except OSError as e:
    raise RunnerError(f"cannot read labels {labels_path}: "
                      f"{_first_line(e)}") from None
  if len(names) != num_classes:
    raise RunnerError(f"{labels_path} has {len(names)} names but the model "
                      f"has {num_classes} classes")
  return names


if __name__ == "__main__":
  sys.exit(main())
