"""An evaluation that carries on after a break: each finished attack kept on disk.

Every finished attack's per-example correctness and its eval.json entry go to
one folder, beside what they were measured on (the identity: model, transfer
source, images, labels and settings). A later evaluation with the same
identity runs only the attacks still missing; another identity is refused,
never mixed in. The attacks after a break draw other noise and random starts
than an unbroken run would have (the random streams start again), which is
as fair a sample; eval.json lists the attacks carried over.
"""

import hashlib
import json
import os

import numpy as np

from rsr_tf import outputs

IDENTITY = "identity.json"


class ResumeError(ValueError):
  """The folder holds an unfinished evaluation of something else."""


def model_identity(model):
  """sha256 of a model file or folder, or of a Keras model's architecture and
  weights. Raises ResumeError for a model known only by its function."""
  if model is None:
    return None
  path = model if isinstance(model, str) else getattr(model, "name", None)
  if isinstance(path, str) and os.path.exists(path):
    return outputs.sha256_of(path)
  keras_model = getattr(model, "model", None) or (
      model if hasattr(model, "get_weights") else None)
  if keras_model is None:
    raise ResumeError("resuming needs the model as a path or a Keras model, "
                      "to know it is the same one")
  digest = hashlib.sha256(keras_model.to_json().encode())
  for weight in keras_model.get_weights():
    digest.update(np.ascontiguousarray(weight).tobytes())
  return digest.hexdigest()


def identity(model, source, images, labels, settings):
  """What an evaluation's results depend on, as JSON-ready values."""
  return {"model": model_identity(model), "source": model_identity(source),
          "images": hashlib.sha256(np.ascontiguousarray(images).tobytes()
                                   ).hexdigest(),
          "images_shape": list(images.shape),
          "labels": hashlib.sha256(np.asarray(labels, np.int64).tobytes()
                                   ).hexdigest(),
          "settings": json.loads(json.dumps(settings))}


class Progress:
  """The finished attacks of one evaluation, in `folder`.

  Attributes:
    finished: {key: (bool [passes, examples], entry)} carried over.
  """

  def __init__(self, folder, ident):
    self.folder = folder
    path = os.path.join(folder, IDENTITY)
    self.finished = {}
    if os.path.exists(path):
      try:
        with open(path) as f:
          recorded = json.load(f)
      except ValueError as e:
        raise ResumeError(f"{path} is not readable ({e}); delete {folder} to "
                          "start the evaluation again") from e
      differ = sorted(k for k in set(recorded) | set(ident)
                      if recorded.get(k) != ident.get(k))
      if differ:
        raise ResumeError(
            f"{folder} holds an unfinished evaluation of something else (other "
            f"{', '.join(differ)}); delete it to start again, or "
            "evaluate into another folder")
      for name in sorted(os.listdir(folder)):
        if name.endswith(".npz"):
          with np.load(os.path.join(folder, name), allow_pickle=False) as saved:
            self.finished[name[:-4]] = (saved["correct"],
                                        json.loads(str(saved["entry"])))
    else:
      if os.path.isdir(folder) and any(n.endswith(".npz")
                                       for n in os.listdir(folder)):
        raise ResumeError(f"{folder} holds finished attacks without the "
                          f"{IDENTITY} that says what they measured; delete it "
                          "to start the evaluation again")
      os.makedirs(folder, exist_ok=True)
      outputs.write_json_atomic(path, ident)

  def save(self, key, correct, entry):
    with outputs.atomic_path(os.path.join(self.folder, key + ".npz")) as tmp:
      with open(tmp, "wb") as f:
        np.savez(f, correct=correct, entry=np.array(json.dumps(entry)))
