"""Train, evaluate and collect every variant of one budget, resumably.

  python scripts/reproduce.py --budget=cpu --image_folder=/tmp/cifar10

For each variant in --variants order: `scripts/train.py --flagfile=configs/
<budget>/<variant>.flags`, then `scripts/evaluate.py` on its model (transfer
attacks crafted on the dense PGD-AT model), then a copy of metrics.json,
eval.json and the model into --results_dir. A step whose output exists is
skipped, and an interrupted training resumes from its checkpoints, so after a
crash the same command is simply run again. Run from the repository root: the
flagfiles name their output folders relative to it.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from rsr_tf import outputs  # noqa: E402  (no TensorFlow at import)
from rsr_tf import registry  # noqa: E402
from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The baseline first: every other variant's transfer attack is crafted on it.
VARIANTS = ("at", "rsr_85", "pni_at", "at_prune_85", "natural", "rsr_50",
            "rsr_70", "rsr_95")
TRANSFER_SOURCE = "at"
STEPS = ("train", "evaluate", "collect")


def define_flags():
  flags.DEFINE_string("budget", "cpu", "Folder under --configs_dir: cpu, or "
                      "paper/resnet20, paper/resnet18, paper/vgg16.")
  flags.DEFINE_string("configs_dir", "configs", "Folder of the budgets' "
                      "flagfiles.")
  flags.DEFINE_list("variants", None, "Variants to run, in order (default: "
                    "every flagfile of the budget, the transfer source first, "
                    "then " + ", ".join(VARIANTS[1:]) + ", then the rest by "
                    "name; files named _*.flags are shared parts, not variants).")
  flags.DEFINE_list("steps", list(STEPS), "Steps to run: " + ", ".join(STEPS))
  flags.DEFINE_string("image_folder", None, "CIFAR-10 copy laid out as "
                      "DIR/train/<class>/, DIR/test/<class>/ (default: tfds).")
  flags.DEFINE_bool("embedded_sample", False, "Use the 2,000/500-image "
                    "CIFAR-10 sample shipped in the package (a smoke run).")
  flags.DEFINE_integer("eval_limit", 1000, "Held-out images per evaluation "
                       "(class-balanced).", lower_bound=1)
  flags.DEFINE_enum("preset", "cpu", list(registry.PRESETS), "Evaluation "
                    "preset (scripts/evaluate.py --preset).")
  flags.DEFINE_list("attacks", None, "Attacks of the evaluation (default: the "
                    "preset's); transfer is left out for the transfer source "
                    "itself.")
  flags.DEFINE_string("results_dir", "results", "Where the JSON files and "
                      "models are collected.")


def budget_variants(folder):
  """The variants of a budget folder, in the order reproduce runs them.

  A variant that starts from another run's phase 1 (--init_from) runs after
  every variant that does not, so its source has finished by then.
  """
  names = sorted(name[:-len(".flags")] for name in os.listdir(folder)
                 if name.endswith(".flags") and not name.startswith("_"))
  rank = {name: i for i, name in enumerate(VARIANTS)}

  def starts_from_another(name):
    with open(os.path.join(folder, f"{name}.flags")) as f:
      return any(line.strip().startswith("--init_from=") for line in f)

  return sorted(names, key=lambda name: (starts_from_another(name),
                                         rank.get(name, len(VARIANTS)), name))


def _flagfile(variant):
  return os.path.join(FLAGS.configs_dir, FLAGS.budget, f"{variant}.flags")


def _run_dir(variant):
  """The --output_dir the variant's flagfile names."""
  with open(_flagfile(variant)) as f:
    for line in f:
      if line.strip().startswith("--output_dir="):
        return line.strip()[len("--output_dir="):]
  _cli.fail(f"{_flagfile(variant)} names no --output_dir")


def _data_flags():
  if FLAGS.embedded_sample:
    return ["--embedded_sample"]
  return [f"--image_folder={FLAGS.image_folder}"] if FLAGS.image_folder else []


def _run(command, log_path):
  """Runs one step as its own process, its output appended to `log_path`."""
  printable = " ".join(command[1:])
  print(f"$ python {printable}", flush=True)
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  started = time.time()
  # verbose=2 logging (one line per epoch) instead of progress bars in a file.
  env = dict(os.environ, CI=os.environ.get("CI", "1"))
  with open(log_path, "a") as log:
    log.write(f"\n$ python {printable}\n")
    log.flush()
    code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT,
                           env=env)
  minutes = (time.time() - started) / 60
  if code:
    _cli.fail(f"step failed after {minutes:.1f} min (exit {code}); see "
              f"{log_path}; run the same command again to resume")
  print(f"  done in {minutes:.1f} min", flush=True)


def train(variant):
  if os.path.exists(os.path.join(_run_dir(variant), "metrics.json")):
    print(f"{variant}: trained ({_run_dir(variant)}/metrics.json)")
    return
  _run([sys.executable, "scripts/train.py", f"--flagfile={_flagfile(variant)}",
        *_data_flags()], os.path.join(_run_dir(variant), "train.log"))


def evaluate(variant):
  out = os.path.join(_run_dir(variant), "eval")
  if os.path.exists(os.path.join(out, "eval.json")):
    print(f"{variant}: evaluated ({out}/eval.json)")
    return
  attacks = list(FLAGS.attacks or registry.PRESETS[FLAGS.preset]["attacks"])
  if not os.path.exists(_flagfile(TRANSFER_SOURCE)):
    _cli.fail(f"{variant}: the transfer source {TRANSFER_SOURCE} has no "
              f"flagfile {_flagfile(TRANSFER_SOURCE)}")
  source = os.path.join(_run_dir(TRANSFER_SOURCE), "model.keras")
  extra = [f"--source_model={source}"]
  if variant == TRANSFER_SOURCE:
    if "transfer" in attacks:
      attacks.remove("transfer")  # a model transferred onto itself is white-box
    extra = []
  elif not os.path.exists(source):
    _cli.fail(f"{variant}: the transfer source {source} does not exist yet; "
              f"train {TRANSFER_SOURCE} first")
  _run([sys.executable, "scripts/evaluate.py",
        f"--model={os.path.join(_run_dir(variant), 'model.keras')}", *extra,
        *_data_flags(), f"--eval_limit={FLAGS.eval_limit}",
        f"--preset={FLAGS.preset}", f"--attacks={','.join(attacks)}",
        f"--output_dir={out}"],
       os.path.join(_run_dir(variant), "evaluate.log"))


def _copy(source, target):
  os.makedirs(os.path.dirname(target), exist_ok=True)
  with outputs.atomic_path(target) as temporary:
    shutil.copyfile(source, temporary)


def folder_digest(folder):
  """sha256 over the sorted relative paths and bytes of every file in `folder`.

  Provenance of the files themselves; `rsr_tf.data.fingerprint` is the
  lighter check (labels and shapes) that a resumed run makes.
  """
  digest = hashlib.sha256()
  count = 0
  for root, dirs, names in os.walk(folder):
    dirs.sort()
    for name in sorted(names):
      path = os.path.join(root, name)
      digest.update(os.path.relpath(path, folder).encode() + b"\0")
      with open(path, "rb") as f:
        digest.update(f.read())
      count += 1
  return {"folder": os.path.abspath(folder), "files": count,
          "sha256": digest.hexdigest()}


def _describe(record):
  if record.get("sha256"):
    return f"{record['files']:,} files, sha256 {record['sha256'][:12]}"
  return record.get("source", "unknown")


def _write_data_record():
  """results/<budget>/data.json: which data the collected runs used.

  It names the data, not where it lay: the same files at another path leave
  the record as it is, so a committed record does not change with the
  machine. Other data is refused before any step runs, since the runs
  collected so far were trained and scored on the recorded data.
  """
  record = ({"source": "embedded_sample"} if FLAGS.embedded_sample else
            {"source": "image_folder", **folder_digest(FLAGS.image_folder)}
            if FLAGS.image_folder else {"source": "tfds:cifar10"})
  path = os.path.join(FLAGS.results_dir, FLAGS.budget, "data.json")
  if os.path.exists(path):
    try:
      with open(path) as f:
        recorded = json.load(f)
    except ValueError as e:
      _cli.fail(f"{path} is not valid JSON ({e}); restore it from git")
    if all(recorded.get(k) == record.get(k) for k in ("source", "sha256")):
      return
    _cli.fail(f"{path} records other data ({_describe(recorded)}) than this "
              f"run's ({_describe(record)}); use the recorded data, or another "
              "--results_dir")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  outputs.write_json_atomic(path, record)


def collect(variant):
  run_dir = _run_dir(variant)
  target = os.path.join(FLAGS.results_dir, FLAGS.budget, variant)
  copies = [(name, os.path.join(target, os.path.basename(name)))
            for name in ("metrics.json", "eval/eval.json", "eval/eval.md",
                         "eval/per_example.npz", "eval/model_card.json",
                         "eval/MODEL_CARD.md")]
  copies.append(("model.keras", os.path.join(
      FLAGS.results_dir, "models", FLAGS.budget, f"{variant}.keras")))
  copied = [(os.path.join(run_dir, name), to) for name, to in copies
            if os.path.exists(os.path.join(run_dir, name))]
  for source, to in copied:
    _copy(source, to)
  print(f"{variant}: collected {len(copied)} files into {target}" if copied
        else f"{variant}: nothing to collect yet in {run_dir}")


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  os.chdir(ROOT)
  if not os.path.isdir(os.path.join(FLAGS.configs_dir, FLAGS.budget)):
    _cli.fail(f"--budget {FLAGS.budget!r}: no folder "
              f"{os.path.join(FLAGS.configs_dir, FLAGS.budget)}")
  variants = FLAGS.variants or budget_variants(
      os.path.join(FLAGS.configs_dir, FLAGS.budget))
  for variant in variants:
    if not os.path.exists(_flagfile(variant)):
      _cli.fail(f"--variants: no flagfile {_flagfile(variant)}")
  unknown = set(FLAGS.steps) - set(STEPS)
  if unknown:
    _cli.fail(f"--steps: unknown {', '.join(sorted(unknown))}; choose from "
              f"{', '.join(STEPS)}")
  _cli.check_image_folder(FLAGS.image_folder)
  if "collect" in FLAGS.steps:
    _write_data_record()
  steps = {"train": train, "evaluate": evaluate, "collect": collect}
  for variant in variants:
    for step in STEPS:
      if step in FLAGS.steps:
        steps[step](variant)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
