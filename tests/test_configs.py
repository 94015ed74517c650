"""Every flagfile under configs/ parses into a valid TrainConfig, and the budgets hold."""

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.flags"),
                             recursive=True))

# Parses each flagfile exactly as scripts/train.py does, in one process: the
# flags are defined once, so each file is parsed into fresh flag values.
_PARSE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from absl import flags
from scripts import train
train.define_flags()
out = {}
for path in sys.argv[2:]:
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["train.py", "--flagfile=" + path])
  out[path] = train.config_from_flags().to_dict()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def configs():
  result = subprocess.run([sys.executable, "-c", _PARSE, ROOT, *FLAGFILES],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return {os.path.relpath(k, os.path.join(ROOT, "configs")): v
          for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}


VARIANTS = ("natural", "at", "pni_at", "rsr_50", "rsr_70", "rsr_85", "rsr_95",
            "at_prune_85")


def test_every_variant_exists_at_both_budgets(configs):
  expected = {f"cpu/{v}.flags" for v in VARIANTS} | {
      f"paper/{m}/{v}.flags" for m in ("resnet20", "resnet18", "vgg16")
      for v in VARIANTS}
  assert set(configs) == expected


def test_output_dir_and_model_follow_the_file_name(configs):
  for name, config in configs.items():
    budget_dir = os.path.dirname(name)
    variant = os.path.basename(name)[:-len(".flags")]
    assert config["output_dir"] == f"runs/{budget_dir}/{variant}", name
    if budget_dir == "cpu":
      assert config["model"]["name"] == "resnet20", name
    else:
      assert config["model"]["name"] == budget_dir.split("/")[1], name


def test_variants_differ_only_where_they_should(configs):
  for name, config in configs.items():
    variant = os.path.basename(name)[:-len(".flags")]
    noisy = variant.startswith(("rsr", "pni"))
    assert (config["model"]["noise"] == "channel") == noisy, name
    assert config["loss"]["adversarial"] == (variant != "natural"), name
    assert (config["loss"]["lambda_l1"] > 0) == variant.startswith("rsr"), name
    pruned = variant.startswith("rsr") or variant == "at_prune_85"
    assert (config["prune"]["schedule"] == "oneshot") == pruned, name
    if pruned:
      assert config["prune"]["target_sparsity"] == int(variant[-2:]) / 100, name


def test_adversarial_variants_get_equal_compute(configs):
  # Pruned variants split the same epochs into training and fine-tuning.
  for name, config in configs.items():
    if not config["loss"]["adversarial"]:
      continue
    epochs = config["optimizer"]["epochs"] + config["optimizer"]["finetune_epochs"]
    assert epochs == (6 if name.startswith("cpu") else 160), name


def test_sparsity_sweep_prunes_the_rsr_85_dense_model(configs):
  for name, config in configs.items():
    variant = os.path.basename(name)[:-len(".flags")]
    budget_dir = os.path.dirname(name)
    if variant in ("rsr_50", "rsr_70", "rsr_95"):
      assert config["init_from"] == f"runs/{budget_dir}/rsr_85", name
      source = dict(configs[f"{budget_dir}/rsr_85.flags"])
      for key in ("prune", "output_dir", "init_from"):
        source.pop(key), config.pop(key)
      assert config == source, name  # the same phase 1 in every other respect
    else:
      assert not config["init_from"], name


def test_noise_std_is_phase_two_and_old_runs_still_resume():
  from rsr_tf import config as config_lib  # noqa: E402
  import dataclasses  # noqa: E402
  import json  # noqa: E402
  base = config_lib.TrainConfig()
  kept = dataclasses.replace(base, prune=dataclasses.replace(base.prune,
                                                             noise_std="kept"))
  assert kept.same_phase_one_as(json.loads(base.to_json()))
  assert not kept.same_training_as(json.loads(base.to_json()))
  before = json.loads(base.to_json())
  del before["prune"]["noise_std"]  # a config.json written before the switch
  assert base.same_training_as(before) and not kept.same_training_as(before)
  with pytest.raises(config_lib.ConfigError, match="--noise_std"):
    dataclasses.replace(base, prune=dataclasses.replace(
        base.prune, noise_std="some")).validate()
