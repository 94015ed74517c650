"""Frozen, validated configuration for RSR training; flags map onto these."""

import dataclasses
import json
import os
from typing import Optional

from rsr_tf import registry  # no TensorFlow at import
from rsr_tf import saved_config

MODEL_NAMES = ("resnet20", "resnet18", "vgg16")
NOISE_MODES = ("none", "layer", "channel", "element")
# What PNI-W's sigma = std(w) is taken over: the whole kernel, as the formula
# reads, or only the weights a pruning mask kept (the zeros shrink it).
NOISE_STD = ("all", "kept")
PRUNE_SCHEDULES = ("none", "oneshot", "polynomial")
# Single weights (masks) or whole filters (a physically narrower model).
PRUNE_STRUCTURES = ("unstructured", "channel")
# Channel pruning rounds kept widths up to multiples of this. 16, not 8: a
# ResNet-20 with 69.5% of its MACs removed ran 2.04x faster than dense at
# batch 1 and 2.19x at batch 32 with multiples of 16, against 1.89x and 1.95x
# with 8 (XNNPACK, 1 thread, AVX512 CPU: benchmarks/channel_speed.json and
# channel_speed_multiple8.json; wide vector kernels waste lanes on odd widths,
# is our reading). A layer whose filters all fall below the threshold keeps
# the floor of 8 channels either way.
CHANNEL_MULTIPLE = 16
# What export can write. tflite_int16x8 (16-bit activations, 8-bit weights)
# is for users who need top-1 agreement with Keras; it is not in the default.
EXPORT_FORMATS = ("saved_model", "tflite_float", "tflite_dynamic", "tflite_int8",
                  "tflite_int16x8")
DEFAULT_EXPORT_FORMATS = EXPORT_FORMATS[:4]
LR_SCHEDULES = ("per_phase", "step", "cosine")
PRECISIONS = ("none", "mixed_bfloat16", "mixed_float16")
# tf.distribute strategies by name; rsr_tf.distribute builds them.
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


# The paper waits 5 of its 160 epochs before adversarial training starts.
PAPER_ADV_DELAY = (5, 160)


def adversarial_start_epoch(adversarial, steps, adv_delay_epochs, epochs):
  """First 0-based epoch with adversarial examples; None if never.

  `adv_delay_epochs=None` keeps the paper's 5 of 160 epochs, scaled to
  `epochs`.
  """
  if not adversarial or steps == 0:
    return None
  if adv_delay_epochs is not None:
    return int(adv_delay_epochs)
  return int(epochs * PAPER_ADV_DELAY[0] // PAPER_ADV_DELAY[1])


def is_model_file(spec):
  return spec.endswith(".keras")


def is_model_factory(spec):
  """`package.module:function`: a factory taking input_shape and num_classes."""
  module, _, function = spec.partition(":")
  return bool(module and function) and all(
      part.isidentifier() for part in module.split(".") + [function])


class ConfigError(ValueError):
  """A configuration value breaks a rule; the message names the flag."""


def _require(ok, message):
  if not ok:
    raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the images come from and how many of them are used.

  Exactly one source is used: `image_folder` if set, else the embedded sample
  if `embedded_sample`, else the tfds dataset `dataset` (with `data_dir`).
  """
  dataset: str = "cifar10"
  image_folder: Optional[str] = None
  embedded_sample: bool = False
  data_dir: Optional[str] = None
  train_limit: int = 0  # 0 means every example
  eval_limit: int = 0
  batch_size: int = 128
  augment: bool = True
  seed: int = 0
  skip_bad_images: bool = False
  # (height, width) every image is resized to; None keeps the stored size
  # (an image folder's images must then share one).
  image_size: Optional[tuple] = None
  # 1 or 3; None: the source's own (tfds declares it; folders are RGB).
  channels: Optional[int] = None
  # Training images held out (class-balanced, the last of each class) to
  # validate on after every epoch; 0 validates on the eval split instead.
  validation_size: int = 0

  def validate(self):
    _require(self.image_size is None or (
        len(self.image_size) == 2 and all(d >= 1 for d in self.image_size)),
             f"--image_size must be H,W with both >= 1, got {self.image_size}")
    _require(self.channels in (None, 1, 3),
             f"--channels must be 1 or 3, got {self.channels}")
    _require(self.batch_size >= 1,
             f"--batch_size must be >= 1, got {self.batch_size}")
    _require(self.train_limit >= 0,
             f"--train_limit must be >= 0, got {self.train_limit}")
    _require(self.eval_limit >= 0,
             f"--eval_limit must be >= 0, got {self.eval_limit}")
    _require(self.validation_size >= 0,
             f"--validation_size must be >= 0, got {self.validation_size}")
    _require(not (self.image_folder and self.embedded_sample),
             "--image_folder and --embedded_sample are two data sources; pass one")
    if self.train_limit:
      _require(self.train_limit >= self.batch_size,
               f"--train_limit={self.train_limit} is smaller than one batch "
               f"(--batch_size={self.batch_size})")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  name: str = "resnet20"
  noise: str = "channel"
  alpha_init: float = 0.25

  def validate(self):
    _require(self.name in MODEL_NAMES or is_model_file(self.name)
             or is_model_factory(self.name),
             f"--model must be one of {', '.join(MODEL_NAMES)}, a saved "
             f"PATH.keras or a package.module:function factory, got "
             f"{self.name!r}")
    _require(not is_model_file(self.name) or os.path.isfile(self.name),
             f"--model {self.name!r} does not exist or is not a file")
    _require(self.noise in NOISE_MODES,
             f"--noise must be one of {', '.join(NOISE_MODES)}, got {self.noise!r}")
    _require(self.alpha_init >= 0,
             f"--alpha_init must be >= 0, got {self.alpha_init}")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """L-inf PGD; eps and step are in pixel units of [0, 1] images."""
  eps: float = 8 / 255
  step_size: float = 2 / 255
  steps: int = 7
  rand_init: bool = True

  def validate(self):
    _require(self.eps >= 0, f"--eps must be >= 0, got {self.eps * 255:g}/255")
    _require(self.eps <= 1, f"--eps must be <= 255/255, got {self.eps * 255:g}/255")
    _require(self.step_size >= 0,
             f"--eps_step must be >= 0, got {self.step_size * 255:g}/255")
    _require(self.step_size <= self.eps,
             f"--eps_step ({self.step_size * 255:g}/255) must not exceed --eps "
             f"({self.eps * 255:g}/255)")
    _require(self.steps >= 1, f"--pgd_steps must be >= 1, got {self.steps}")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  adversarial: bool = True
  clean_weight: float = 0.5
  adv_weight: float = 0.5
  adv_delay_epochs: int = -1  # -1: the paper's 5 of 160 epochs, scaled
  attack_true_labels: bool = False
  lambda_l1: float = 5e-6
  lambda_group: float = 0.0
  weight_decay: float = 3e-4

  def validate(self):
    for name in ("clean_weight", "adv_weight", "lambda_l1", "lambda_group",
                 "weight_decay"):
      value = getattr(self, name)
      _require(value >= 0, f"--{name} must be >= 0, got {value}")
    _require(self.adv_delay_epochs >= -1,
             f"--adv_delay_epochs must be >= 0 (or -1 for auto), got "
             f"{self.adv_delay_epochs}")
    if self.adversarial:
      _require(self.clean_weight + self.adv_weight > 0,
               "--clean_weight and --adv_weight are both 0: nothing to train")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 0.1
  momentum: float = 0.9
  lr_milestones: tuple = (0.5, 0.75)  # fractions of `epochs`
  lr_gamma: float = 0.1
  epochs: int = 160
  finetune_epochs: int = 0
  finetune_lr: float = 0.01
  # "per_phase": step decay at `lr_milestones` of phase 1, then
  # `finetune_lr`. "step"/"cosine": one function of the global epoch over
  # both phases (milestones in epochs), shared by every variant.
  lr_schedule: str = "per_phase"
  lr_milestone_epochs: tuple = ()

  def validate(self):
    _require(self.lr_schedule in LR_SCHEDULES,
             f"--lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got "
             f"{self.lr_schedule!r}")
    total = self.epochs + self.finetune_epochs
    if self.lr_schedule == "step":
      _require(bool(self.lr_milestone_epochs) and all(
          0 < m < total for m in self.lr_milestone_epochs) and list(
              self.lr_milestone_epochs) == sorted(self.lr_milestone_epochs),
               f"--lr_milestone_epochs must be increasing epochs in (0, "
               f"{total}) with --lr_schedule=step, got "
               f"{list(self.lr_milestone_epochs)}")
    _require(self.learning_rate > 0,
             f"--lr must be > 0, got {self.learning_rate}")
    _require(0 <= self.momentum < 1,
             f"--momentum must be in [0, 1), got {self.momentum}")
    _require(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
    _require(self.finetune_epochs >= 0,
             f"--finetune_epochs must be >= 0, got {self.finetune_epochs}")
    _require(self.finetune_lr > 0,
             f"--finetune_lr must be > 0, got {self.finetune_lr}")
    _require(all(0 < m < 1 for m in self.lr_milestones),
             f"--lr_milestones must be fractions in (0, 1), got "
             f"{list(self.lr_milestones)}")
    _require(list(self.lr_milestones) == sorted(self.lr_milestones),
             f"--lr_milestones must be increasing, got {list(self.lr_milestones)}")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
  """`oneshot`: global magnitude threshold after training, then fine-tune.

  `polynomial`: tfmot's gradual schedule from `begin_epoch` to `end_epoch`
  (0 means the last training epoch), then fine-tune.
  """
  schedule: str = "oneshot"
  target_sparsity: float = 0.85
  begin_epoch: int = 0
  end_epoch: int = 0
  frequency: int = 100  # mask updates, in training forward passes
  # PNI-W's sigma after pruning: std over "all" kernel weights or the "kept".
  noise_std: str = "all"
  # "channel": `target_sparsity` is the fraction of prunable MACs removed
  # with whole filters, and the model is rebuilt narrower.
  structure: str = "unstructured"
  channel_multiple: int = CHANNEL_MULTIPLE

  def validate(self, epochs):
    _require(self.schedule in PRUNE_SCHEDULES,
             f"--prune_schedule must be one of {', '.join(PRUNE_SCHEDULES)}, "
             f"got {self.schedule!r}")
    _require(0 <= self.target_sparsity < 1,
             f"--target_sparsity must be in [0, 1), got {self.target_sparsity}")
    _require(self.frequency >= 1,
             f"--prune_frequency must be >= 1, got {self.frequency}")
    _require(self.noise_std in NOISE_STD,
             f"--noise_std must be one of {', '.join(NOISE_STD)}, got "
             f"{self.noise_std!r}")
    _require(self.structure in PRUNE_STRUCTURES, f"--prune_structure must be "
             f"one of {', '.join(PRUNE_STRUCTURES)}, got {self.structure!r}")
    _require(self.channel_multiple >= 1, f"--channel_multiple must be >= 1, "
             f"got {self.channel_multiple}")
    _require(self.structure == "unstructured" or self.schedule == "oneshot",
             "--prune_structure=channel prunes once after training: it needs "
             "--prune_schedule=oneshot")
    if self.schedule == "polynomial":
      end = self.end_epoch or epochs
      _require(0 <= self.begin_epoch < end <= epochs,
               f"--prune_begin_epoch ({self.begin_epoch}) and --prune_end_epoch "
               f"({end}) must satisfy 0 <= begin < end <= --epochs ({epochs})")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  attack: AttackConfig = AttackConfig()
  loss: LossConfig = LossConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  prune: PruneConfig = PruneConfig()
  output_dir: str = "runs/default"
  eval_noise_draws: int = 3
  seed: int = 0
  # bfloat16 suits CPUs with AVX512_BF16 and TPUs; float16 (with loss
  # scaling) suits GPUs. Variables, noise statistics and logits stay float32.
  mixed_precision: str = "none"
  jit_compile: bool = False
  # tf.distribute strategy; `data.batch_size` is the global batch, split
  # over the replicas. multi_worker reads the cluster from TF_CONFIG.
  strategy: str = "default"
  tpu: Optional[str] = None  # TPU name or grpc:// address, for "tpu"
  # Another run's folder whose finished phase 1 this run starts from, so a
  # sparsity sweep trains the dense model once ("": train it here).
  init_from: str = ""
  # PGD steps on the validation images after every epoch (0: none), which
  # also become the final check's attack; its step in pixel units.
  validation_pgd_steps: int = 0
  validation_step_size: float = 2 / 255

  def validate(self):
    """Raises ConfigError naming the first flag that breaks a rule."""
    self.data.validate()
    self.model.validate()
    self.attack.validate()
    self.loss.validate()
    self.optimizer.validate()
    self.prune.validate(self.optimizer.epochs)
    _require(self.mixed_precision in PRECISIONS,
             f"--mixed_precision must be one of {', '.join(PRECISIONS)}, got "
             f"{self.mixed_precision!r}")
    _require(not self.init_from or self.prune.schedule == "oneshot",
             "--init_from starts from another run's finished phase 1, so it "
             "needs --prune_schedule=oneshot")
    _require(not self.init_from or os.path.abspath(self.init_from)
             != os.path.abspath(self.output_dir),
             "--init_from must name another run's folder, not --output_dir")
    _require(self.strategy in STRATEGIES,
             f"--strategy must be one of {', '.join(STRATEGIES)}, got "
             f"{self.strategy!r}")
    _require(not self.tpu or self.strategy == "tpu",
             f"--tpu={self.tpu} needs --strategy=tpu, got --strategy="
             f"{self.strategy}")
    _require(self.validation_pgd_steps >= 0, f"--validation_pgd_steps must "
             f"be >= 0, got {self.validation_pgd_steps}")
    _require(not self.validation_pgd_steps
             or 0 < self.validation_step_size <= self.attack.eps,
             f"--validation_eps_step ({self.validation_step_size * 255:g}/255) "
             f"must be in (0, --eps={self.attack.eps * 255:g}/255]")
    _require(self.eval_noise_draws >= 1,
             f"--eval_noise_draws must be >= 1, got {self.eval_noise_draws}")
    if self.prune.schedule == "none":
      _require(self.optimizer.finetune_epochs == 0,
               "--finetune_epochs needs a pruning schedule; "
               "--prune_schedule=none trains dense")
    return self

  def adversarial_start_epoch(self):
    """First 0-based epoch with adversarial examples; None if never."""
    delay = self.loss.adv_delay_epochs
    return adversarial_start_epoch(self.loss.adversarial, self.attack.steps,
                                   None if delay < 0 else delay,
                                   self.optimizer.epochs)

  def to_dict(self):
    return dataclasses.asdict(self)

  def same_training_as(self, saved):
    """Whether a saved `to_dict()` describes the same training as this one.

    Where it runs does not count (`saved_config.where_it_runs`): a run may
    resume under another strategy, on another machine, with its data at
    another path.
    """
    return not self.training_differences(saved)

  def training_differences(self, saved):
    """The dotted names of the settings where `saved` trains differently."""
    mine = saved_config.without_later_defaults(json.loads(self.to_json()), saved)
    return saved_config.differences(saved_config.where_it_runs(saved),
                                    saved_config.where_it_runs(mine))

  def same_phase_one_as(self, saved):
    """Whether a saved `to_dict()` trains the same dense model in phase 1.

    Pruning and fine-tuning may differ: that is what a sweep varies.
    """
    def phase_one(d):
      d = saved_config.where_it_runs(d)
      for key in ("prune", "output_dir", "init_from", "eval_noise_draws"):
        d.pop(key, None)
      # With one curve over both phases, fine-tuning's length sets the
      # phase-1 rates too.
      per_phase = d["optimizer"].get("lr_schedule", "per_phase") == "per_phase"
      for key in ("finetune_epochs",) * per_phase + ("finetune_lr",):
        d["optimizer"].pop(key, None)
      return d
    mine = saved_config.without_later_defaults(json.loads(self.to_json()), saved)
    return phase_one(saved) == phase_one(mine)

  def to_json(self):
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


EVAL_ATTACKS = registry.NAMES
EVAL_PRESETS = tuple(registry.PRESETS)
EVAL_NORMS = registry.NORMS


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """The robustness evaluation of scripts/evaluate.py; eps values in [0, 1].

  The defaults are the "cpu" preset, sized for a 2-core CPU; `from_preset`
  gives the others (AutoAttack's "aa_rand" and "aa_standard"). With
  `sequential`, each attack after the first runs only on the images that
  survived every earlier one in some pass, as AutoAttack does, and its entry
  is the robust accuracy after it (the cumulative AND).
  """
  attacks: tuple = registry.PRESETS["cpu"]["attacks"]
  preset: str = "cpu"
  norm: str = "linf"
  eps: float = 8 / 255
  step_size: float = 2 / 255
  steps: int = 7
  strong_steps: int = 20
  restarts: int = 1
  noise_draws: int = 5
  eot_samples: int = 10
  apgd_steps: int = 20
  apgd_eot_samples: int = 5
  apgd_restarts: int = 1
  apgd_targets: int = 9
  square_queries: int = 1000
  square_noise_draws: int = 1
  spsa_steps: int = 20
  spsa_samples: int = 64
  # Images the query attacks (Square, SPSA) run on; 0: all of them, which
  # puts them in the headline.
  blackbox_limit: int = 200
  sequential: bool = False
  eps_sweep: tuple = (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255)
  batch_size: int = 128
  seed: int = 0

  @classmethod
  def from_preset(cls, preset, **overrides):
    """The preset's settings, then `overrides` (explicit flags win)."""
    _require(preset in registry.PRESETS, f"--preset must be one of "
             f"{', '.join(registry.PRESETS)}, got {preset!r}")
    return cls(**{**registry.PRESETS[preset], "preset": preset, **overrides})

  def validate(self):
    unknown = [a for a in self.attacks if a not in EVAL_ATTACKS]
    _require(not unknown, f"--attacks has unknown names {unknown}; known: "
             f"{', '.join(EVAL_ATTACKS)}")
    _require(self.norm in EVAL_NORMS, f"--norm must be one of "
             f"{', '.join(EVAL_NORMS)}, got {self.norm!r}")
    if self.norm == "linf":
      _require(0 < self.eps <= 1, f"--eps must be in (0, 255]/255, got "
               f"{self.eps * 255:g}/255")
    else:
      _require(self.eps > 0, f"--l2_eps must be > 0, got {self.eps:g}")
    _require(0 < self.step_size <= self.eps,
             "--eps_step must be in (0, eps], got " + (
                 f"{self.step_size * 255:g}/255" if self.norm == "linf"
                 else f"{self.step_size:g}"))
    for name in ("steps", "strong_steps", "restarts", "noise_draws",
                 "eot_samples", "apgd_steps", "apgd_eot_samples",
                 "apgd_restarts", "apgd_targets", "square_queries",
                 "square_noise_draws", "spsa_steps", "batch_size"):
      value = getattr(self, name)
      _require(value >= 1, f"--{name} must be >= 1, got {value}")
    _require(self.blackbox_limit >= 0,
             f"--blackbox_limit must be >= 0, got {self.blackbox_limit}")
    _require(not self.sequential or self.attacks[:1] == ("clean",),
             "a sequential evaluation starts from clean accuracy: put clean "
             "first in --attacks")
    _require(self.spsa_samples >= 2 and self.spsa_samples % 2 == 0,
             f"--spsa_samples must be an even number >= 2, got {self.spsa_samples}")
    _require(all(0 <= e <= 1 for e in self.eps_sweep),
             "--eps_sweep values must be in [0, 255] (/255)")
    return self
