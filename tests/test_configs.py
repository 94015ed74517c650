"""Every flagfile under configs/ parses into a valid TrainConfig, and the budgets hold."""

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# _*.flags are parts that a budget's variants share, not variants.
FLAGFILES = sorted(path for path in glob.glob(
    os.path.join(ROOT, "configs", "**", "*.flags"), recursive=True)
                   if not os.path.basename(path).startswith("_"))

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
CPU_LONG = ("at", "at_seed1", "pni_at", "at_prune_85", "rsr_85", "rsr_85_seed1")
LASSO_VALUES = ("0", "5e-6", "5e-5", "2e-4", "1e-3")
# The noise-scale twin (point 4 of issue 15): one lambda's phase 1, pruned
# and fine-tuned with --noise_std=kept.
NOISE_KEPT = {"noise_kept_l1_2e-4": "rsr_l1_2e-4"}
# Channel pruning at the sweep's budget (issue 17): one phase 1 with the group
# lasso, pruned to 69% of the MACs; the milder prunes restore its phase 1.
CHANNEL_TARGETS = {"rsr_channel_69": 0.69, "rsr_channel_60": 0.60,
                   "rsr_channel_45": 0.45}
LASSO_SWEEP = (tuple(f"rsr_l1_{v}" for v in LASSO_VALUES) + ("at_prune_85",)
               + tuple(NOISE_KEPT) + tuple(CHANNEL_TARGETS))
# The budgets of the built-in ResNet-20 on 2 cores.
CPU_BUDGETS = ("cpu", "cpu_long", "lasso_sweep")
SEED_SUFFIX = "_seed1"


def _variant(name):
  """rsr_85 for cpu_long/rsr_85_seed1.flags: a second seed is the same variant."""
  return os.path.basename(name)[:-len(".flags")].removesuffix(SEED_SUFFIX)


def test_every_variant_exists_at_every_budget(configs):
  expected = {f"cpu/{v}.flags" for v in VARIANTS} | {
      f"paper/{m}/{v}.flags" for m in ("resnet20", "resnet18", "vgg16")
      for v in VARIANTS} | {f"cpu_long/{v}.flags" for v in CPU_LONG} | {
          f"lasso_sweep/{v}.flags" for v in LASSO_SWEEP}
  assert set(configs) == expected


def test_output_dir_and_model_follow_the_file_name(configs):
  for name, config in configs.items():
    budget_dir = os.path.dirname(name)
    variant = os.path.basename(name)[:-len(".flags")]
    assert config["output_dir"] == f"runs/{budget_dir}/{variant}", name
    if budget_dir in CPU_BUDGETS:
      assert config["model"]["name"] == "resnet20", name
    else:
      assert config["model"]["name"] == budget_dir.split("/")[1], name


def test_variants_differ_only_where_they_should(configs):
  for name, config in configs.items():
    variant = _variant(name)
    if name.startswith("lasso_sweep/"):
      continue  # its own test below
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
    assert epochs == {"cpu": 6, "cpu_long": 20, "lasso_sweep": 8}.get(
        os.path.dirname(name), 160), name


def _learning_rates(config, steps_per_epoch=7):
  """The rate at every step of both phases, as train_rsr schedules them."""
  from rsr_tf import recipe  # noqa: E402
  opt = config["optimizer"]
  train, finetune = recipe.phase_learning_rates(
      opt["lr_schedule"], opt["learning_rate"], opt["epochs"],
      opt["finetune_epochs"], steps_per_epoch, opt["lr_milestones"],
      opt["lr_gamma"], opt["finetune_lr"], opt["lr_milestone_epochs"])
  rates = [float(train(step)) for step in range(opt["epochs"] * steps_per_epoch)]
  rates += [float(finetune(step)) if callable(finetune) else finetune
            for step in range(opt["finetune_epochs"] * steps_per_epoch)]
  return rates


def test_cpu_long_variants_share_one_learning_rate_curve(configs):
  # Pruned variants prune at epoch 16 and carry on along the dense curve.
  dense = _learning_rates(configs["cpu_long/at.flags"])
  assert dense[0] == pytest.approx(0.1) and dense[-1] < 1e-3
  pruned = _learning_rates(configs["cpu_long/rsr_85.flags"])
  assert configs["cpu_long/rsr_85.flags"]["optimizer"]["epochs"] == 16
  assert pruned == pytest.approx(dense, abs=1e-7)


def test_the_cpu_budget_keeps_its_unequal_schedules(configs):
  # Its committed results came from these: per-phase step decay, then 0.01.
  dense, pruned = (_learning_rates(configs[f"cpu/{v}.flags"])[6::7]
                   for v in ("at", "rsr_85"))  # each epoch's last step
  assert dense == pytest.approx([0.1] * 3 + [0.01] + [0.001] * 2)
  assert pruned == pytest.approx([0.1] * 2 + [0.01] * 2 + [0.001] + [0.01])


def test_cpu_long_variants_train_and_validate_alike(configs):
  shared = ("data", "attack", "validation_pgd_steps", "validation_step_size",
            "eval_noise_draws", "mixed_precision", "jit_compile")
  base = configs["cpu_long/at.flags"]
  assert base["data"]["validation_size"] == 1000
  assert base["validation_pgd_steps"] == 7 and base["attack"]["steps"] == 2
  for name, config in configs.items():
    if name.startswith("cpu_long/"):
      seed = 1 if name.endswith(SEED_SUFFIX + ".flags") else 0
      assert config["seed"] == config["data"]["seed"] == seed, name
      for key in shared:
        mine, theirs = config[key], base[key]
        if key == "data":
          mine, theirs = ({**d, "seed": None} for d in (mine, theirs))
        assert mine == theirs, (name, key)


def test_a_second_seed_changes_only_the_seed(configs):
  for variant in ("at", "rsr_85"):
    first = dict(configs[f"cpu_long/{variant}.flags"])
    second = dict(configs[f"cpu_long/{variant}{SEED_SUFFIX}.flags"])
    assert second["output_dir"] == f"runs/cpu_long/{variant}{SEED_SUFFIX}"
    for config in (first, second):
      config.pop("output_dir"), config.pop("seed")
      config["data"] = {**config["data"], "seed": None}
    assert first == second, variant


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
    elif variant not in NOISE_KEPT and variant not in CHANNEL_TARGETS:
      # (those have their own tests)
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


def test_the_lasso_sweep_varies_lambda_alone_on_held_out_validation(configs):
  base = configs["lasso_sweep/rsr_l1_0.flags"]
  assert base["data"]["validation_size"] == 1000 and base["data"]["train_limit"] == 20000
  assert base["prune"]["target_sparsity"] == 0.85 and base["init_from"] == ""
  for value in LASSO_VALUES:
    config = dict(configs[f"lasso_sweep/rsr_l1_{value}.flags"])
    assert config["loss"]["lambda_l1"] == float(value)
    assert config["model"]["noise"] == "channel"
    for key in ("loss", "output_dir"):
      config.pop(key)
    other = {k: v for k, v in base.items() if k not in ("loss", "output_dir")}
    assert config == other, value
  for twin, source in NOISE_KEPT.items():
    kept = dict(configs[f"lasso_sweep/{twin}.flags"])
    original = dict(configs[f"lasso_sweep/{source}.flags"])
    assert kept["prune"]["noise_std"] == "kept"
    assert original["prune"]["noise_std"] == "all"
    assert kept["init_from"] == f"runs/lasso_sweep/{source}"
    for config in (kept, original):
      for key in ("output_dir", "init_from"):
        config.pop(key)
      config["prune"] = {k: v for k, v in config["prune"].items()
                         if k != "noise_std"}
    assert kept == original, twin
  reference = configs["lasso_sweep/at_prune_85.flags"]
  assert reference["model"]["noise"] == "none"
  assert reference["loss"]["lambda_l1"] == 0
  # Same schedule and attack as the cpu_long budget it shortens.
  for key in ("attack", "validation_pgd_steps"):
    assert base[key] == configs["cpu_long/at.flags"][key]
  assert base["optimizer"]["lr_schedule"] == "cosine"


def test_channel_variants_differ_from_the_sweep_in_the_prune_and_lasso_alone(configs):
  base = configs["lasso_sweep/rsr_l1_0.flags"]
  source = "rsr_channel_69"
  for name, target in CHANNEL_TARGETS.items():
    config = dict(configs[f"lasso_sweep/{name}.flags"])
    assert config["prune"]["structure"] == "channel"
    assert config["prune"]["target_sparsity"] == target
    assert config["loss"]["lambda_group"] > 0 and config["loss"]["lambda_l1"] == 0
    assert config["init_from"] == ("" if name == source
                                   else f"runs/lasso_sweep/{source}")
    for key in ("loss", "prune", "output_dir", "init_from"):
      config.pop(key)
    other = {k: v for k, v in base.items()
             if k not in ("loss", "prune", "output_dir", "init_from")}
    assert config == other, name


def test_a_run_resumes_with_its_data_at_another_path_and_names_what_differs():
  from rsr_tf import config as config_lib  # noqa: E402
  import dataclasses  # noqa: E402
  import json  # noqa: E402
  here = config_lib.TrainConfig(
      data=config_lib.DataConfig(image_folder="/tmp/cifar"))
  moved = dataclasses.replace(here, data=dataclasses.replace(
      here.data, image_folder="/work/data", data_dir="/elsewhere"))
  saved = json.loads(here.to_json())
  assert moved.same_training_as(saved) and moved.same_phase_one_as(saved)
  # Another source, or another training setting, still counts.
  tfds = config_lib.TrainConfig()
  assert tfds.training_differences(saved) == ["data.image_folder"]
  assert not tfds.same_phase_one_as(saved)
  faster = dataclasses.replace(moved, optimizer=dataclasses.replace(
      moved.optimizer, learning_rate=0.5))
  assert faster.training_differences(saved) == ["optimizer.learning_rate"]
