"""Whether a saved run's configuration (`TrainConfig.to_dict()`) trains as a new one.

`TrainConfig.same_training_as` and `same_phase_one_as` compare through these:
fields a saved run predates keep their old behaviour, and where a run lies
(strategy, TPU, the data's path) does not count.
"""

import json


# Fields added after runs were saved, with the value that behaves as before
# (channel_multiple: config.CHANNEL_MULTIPLE when the field was added).
_LATER_FIELDS = ((("init_from",), ""), (("prune", "noise_std"), "all"),
                 (("optimizer", "lr_schedule"), "per_phase"),
                 (("optimizer", "lr_milestone_epochs"), []),
                 (("data", "validation_size"), 0),
                 (("prune", "structure"), "unstructured"),
                 (("prune", "channel_multiple"), 16),
                 (("validation_pgd_steps",), 0),
                 (("validation_step_size",), 2 / 255))


def where_it_runs(saved):
  """A copy of a saved `to_dict()` without the settings of where it runs.

  The strategy and TPU (the batch is global and checkpoints hold plain
  values), and where the data lies: an image folder's path counts only as
  being one, and tfds's data_dir not at all. Whether it is the same data is
  the data fingerprint's question (`data.fingerprint`), not the path's.
  """
  d = json.loads(json.dumps(saved))
  for key in ("strategy", "tpu"):
    d.pop(key, None)
  data = d.get("data", {})
  data.pop("data_dir", None)
  if "image_folder" in data:
    data["image_folder"] = bool(data["image_folder"])
  return d


def differences(a, b, prefix=""):
  """Dotted keys whose values differ between two nested dicts."""
  keys = sorted(set(a) | set(b))
  found = []
  for key in keys:
    x, y = a.get(key), b.get(key)
    if isinstance(x, dict) and isinstance(y, dict):
      found += differences(x, y, f"{prefix}{key}.")
    elif x != y:
      found.append(f"{prefix}{key}")
  return found


def without_later_defaults(mine, saved):
  """`mine` without the fields `saved` predates, where they keep old behaviour."""
  for path, default in _LATER_FIELDS:
    parent, saved_parent = mine, saved
    for key in path[:-1]:
      parent, saved_parent = parent[key], saved_parent.get(key, {})
    if path[-1] not in saved_parent and parent.get(path[-1]) == default:
      del parent[path[-1]]
  return mine
