"""Run outputs: atomic writes and the provenance every result file carries."""

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile


def check_writable(directory):
  """Creates `directory` if needed and proves a file can be written there.

  Raises:
    OSError: with a one-line message naming the directory.
  """
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
      pass
  except OSError as e:
    raise OSError(f"output directory {directory!r} is not writable: "
                  f"{e.strerror or e}") from e


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temporary path beside `path`; renames it into place on success.

  Whatever is written there replaces `path` whole or not at all: on an error
  the temporary file is removed and `path` keeps its old content. The
  temporary name keeps the extension, for writers that dispatch on it.
  """
  directory, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text_atomic(path, text):
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def write_json_atomic(path, payload):
  write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def emit_json(payload, path=None):
  """Prints `payload` as JSON and, given `path`, also writes it there atomically."""
  print(json.dumps(payload, indent=2))
  if path:
    write_json_atomic(path, payload)


def save_model_atomic(model, path):
  """Saves a `.keras` file under a temporary name, then renames it."""
  with atomic_path(path) as tmp:
    model.save(tmp)


def git_commit():
  """HEAD of the checkout this package runs from, with '-dirty' if edited."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, check=True,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=here, check=True, capture_output=True,
                           text=True).stdout.strip()
    return commit + ("-dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def provenance(argv=None):
  """Command, commit, date and software that produced a result."""
  import tensorflow as tf  # deferred: rsr_tf has set the Keras switch by now
  argv = list(sys.argv if argv is None else argv)
  return {
      "command": " ".join(["python"] + argv),
      "git_commit": git_commit(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "host": platform.node(),
      "python": platform.python_version(),
      "tensorflow": tf.__version__,
  }


def sha256_of(path):
  """sha256 of a file, or of a directory's files (names and bytes, sorted)."""
  import hashlib  # noqa: E402
  digest = hashlib.sha256()
  files = [path] if os.path.isfile(path) else sorted(
      os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
  for name in files:
    if os.path.isdir(path):
      digest.update(os.path.relpath(name, path).encode())
    with open(name, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  return digest.hexdigest()
