"""Train a robust, sparse model with RSR: PNI-W + PGD training + lasso + pruning.

Example (the paper's recipe at CPU scale):
  python scripts/train.py --model=resnet20 --noise=channel \
    --image_folder=/tmp/cifar10 --train_limit=2000 --eval_limit=500 --epochs=2 \
    --target_sparsity=0.85 --prune_schedule=oneshot --finetune_epochs=1 \
    --output_dir=/tmp/run

Your own model and images (a factory on PYTHONPATH, 40x40 grayscale folders):
  PYTHONPATH=. python scripts/train.py --model=my_models:small_cnn \
    --image_folder=/data/mine --channels=1 --epochs=10 --output_dir=/tmp/mine

eps flags are in 1/255 units of [0, 1] images.
"""

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rsr_tf  # noqa: E402,F401  (before TensorFlow: selects Keras 2)
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from rsr_tf import config as config_lib  # noqa: E402
from scripts import _cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """Every flag of the training script, with its range."""
  _cli.define_data_flags()
  flags.adopt_module_key_flags(_cli)  # data flags show in --helpshort too
  # Model.
  flags.DEFINE_string("model", "resnet20", "Network: a built-in ("
                      f"{', '.join(config_lib.MODEL_NAMES)}), a saved "
                      "PATH.keras (untrained or pretrained), or "
                      "package.module:function, a factory called with "
                      "input_shape=(H, W, C) and num_classes=N. Your own model "
                      "takes [0, 1] images and outputs logits (a final softmax "
                      "is dropped).")
  flags.DEFINE_enum("noise", "channel", list(config_lib.NOISE_MODES),
                    "PNI-W noise mode: one alpha per output channel, per layer, "
                    "per weight, or no noise. Your own model gets it through "
                    "rsr_tf.add_weight_noise; none trains it as it is.")
  flags.DEFINE_float("alpha_init", 0.25, "Initial noise scale alpha.",
                     lower_bound=0)
  # Adversarial training.
  flags.DEFINE_bool("adversarial", True, "PGD adversarial training (off: "
                    "natural training).")
  flags.DEFINE_float("eps", 8.0, "PGD L-inf budget, in /255.", lower_bound=0,
                     upper_bound=255)
  flags.DEFINE_float("eps_step", 2.0, "PGD step size, in /255.", lower_bound=0)
  flags.DEFINE_integer("pgd_steps", 7, "PGD steps.", lower_bound=1)
  flags.DEFINE_bool("rand_init", True, "PGD starts from a uniform random "
                    "point in the eps-ball.")
  flags.DEFINE_bool("attack_true_labels", False, "Attack the true labels "
                    "instead of the model's predictions (label leaking).")
  flags.DEFINE_float("clean_weight", 0.5, "Weight of CE on clean images.",
                     lower_bound=0)
  flags.DEFINE_float("adv_weight", 0.5, "Weight of CE on PGD images.",
                     lower_bound=0)
  flags.DEFINE_integer("adv_delay_epochs", -1, "Epochs of clean training before "
                       "PGD starts; -1 scales the paper's 5 of 160 to --epochs.",
                       lower_bound=-1)
  # Regularisation.
  flags.DEFINE_float("lambda_l1", 5e-6, "Lasso strength on conv/dense kernels.",
                     lower_bound=0)
  flags.DEFINE_float("lambda_group", 0.0, "Group lasso strength over output "
                     "filters.", lower_bound=0)
  flags.DEFINE_float("weight_decay", 3e-4, "L2 weight decay on kernels only.",
                     lower_bound=0)
  # Optimisation.
  flags.DEFINE_float("lr", 0.1, "SGD (Nesterov) learning rate.", lower_bound=0)
  flags.DEFINE_float("momentum", 0.9, "SGD momentum.", lower_bound=0,
                     upper_bound=0.999)
  flags.DEFINE_integer("epochs", 160, "Training epochs before fine-tuning.",
                       lower_bound=1)
  flags.DEFINE_list("lr_milestones", ["0.5", "0.75"], "Fractions of --epochs at "
                    "which the learning rate is multiplied by --lr_gamma.")
  flags.DEFINE_float("lr_gamma", 0.1, "Step-decay factor.", lower_bound=0)
  flags.DEFINE_enum("lr_schedule", "per_phase", list(config_lib.LR_SCHEDULES),
                    "per_phase: step decay at --lr_milestones of phase 1, then "
                    "--finetune_lr. step, cosine: one curve over the global "
                    "epoch of both phases, which a pruned run follows on "
                    "through fine-tuning (equal total epochs, equal rates).")
  flags.DEFINE_list("lr_milestone_epochs", [], "--lr_schedule=step: global "
                    "epochs (0-based) from which the rate is multiplied by "
                    "--lr_gamma.")
  flags.DEFINE_integer("finetune_epochs", -1, "Epochs at the target sparsity "
                       "after pruning; -1: an eighth of --epochs (20 of 160) "
                       "when pruning, 0 when dense.", lower_bound=-1)
  flags.DEFINE_float("finetune_lr", 0.01, "Fine-tuning learning rate.",
                     lower_bound=0)
  # Pruning.
  flags.DEFINE_enum("prune_schedule", "oneshot", list(config_lib.PRUNE_SCHEDULES),
                    "oneshot: global magnitude threshold after training, then "
                    "fine-tune (the paper); polynomial: tfmot's gradual "
                    "schedule; none: dense.")
  flags.DEFINE_enum("prune_structure", "unstructured",
                    list(config_lib.PRUNE_STRUCTURES), "unstructured: single "
                    "weights (the paper). channel: whole filters, until "
                    "--target_sparsity of the prunable MACs is gone, and the "
                    "model rebuilt physically narrower, so it runs faster "
                    "(one-shot only; pair with --lambda_group).")
  flags.DEFINE_integer("channel_multiple", config_lib.CHANNEL_MULTIPLE,
                       "--prune_structure=channel: kept widths are multiples "
                       "of this (16 suits XNNPACK on AVX512 CPUs).",
                       lower_bound=1)
  flags.DEFINE_float("target_sparsity", 0.85, "Fraction of conv/dense weights "
                     "removed, in [0, 1). With --prune_structure=channel: the "
                     "fraction of their MACs removed (ResNet-20 can lose at "
                     "most 69%; 0.69 runs 2.0x faster at batch 1 on XNNPACK).")
  flags.DEFINE_integer("prune_begin_epoch", 0, "polynomial: first pruning epoch.",
                       lower_bound=0)
  flags.DEFINE_integer("prune_end_epoch", 0, "polynomial: epoch the target is "
                       "reached (0: --epochs).", lower_bound=0)
  flags.DEFINE_integer("prune_frequency", 100, "Mask updates every N training "
                       "forward passes.", lower_bound=1)
  flags.DEFINE_enum("noise_std", "all", list(config_lib.NOISE_STD), "After pruning, PNI-W's "
                    "sigma is the std over all kernel weights (the formula; "
                    "the pruned zeros count) or over the kept ones. A phase-2 "
                    "setting: runs that differ only here can share phase 1 "
                    "through --init_from.")
  # Run.
  flags.DEFINE_string("output_dir", "runs/default", "Where model.keras, "
                      "metrics.json, checkpoints and TensorBoard logs go.")
  flags.DEFINE_enum("mixed_precision", "none", list(config_lib.PRECISIONS),
                    "Keras mixed-precision policy for training: mixed_bfloat16 "
                    "for CPUs with AVX512_BF16 and TPUs, mixed_float16 (loss "
                    "scaling) for GPUs. The saved model is float32.")
  flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step.")
  flags.DEFINE_string("init_from", "", "Output folder of a finished run with "
                      "the same phase-1 settings: start from its trained dense "
                      "model and only prune and fine-tune (sparsity sweeps).")
  flags.DEFINE_enum("strategy", "default", list(config_lib.STRATEGIES),
                    "tf.distribute strategy: default (one device), mirrored "
                    "(every local GPU), multi_worker (hosts listed in the "
                    "TF_CONFIG environment variable, the same command on "
                    "each), tpu (see --tpu). --batch_size is the global "
                    "batch, split over the replicas.")
  flags.DEFINE_string("tpu", None, "--strategy=tpu: TPU name or grpc:// "
                      "address (empty: the local TPU of a Cloud TPU VM).")
  flags.DEFINE_integer("validation_size", 0, "Training images held out "
                       "(class-balanced, the same for every seed) to validate "
                       "on after every epoch; 0: validate on the eval images.",
                       lower_bound=0)
  flags.DEFINE_integer("validation_pgd_steps", 0, "PGD-K (true labels, random "
                       "start, --eps) on the validation images after every "
                       "epoch, to catch catastrophic overfitting of a weak "
                       "training attack; also the attack of the final check in "
                       "metrics.json. 0: none, the final check uses the "
                       "training attack.", lower_bound=0)
  flags.DEFINE_float("validation_eps_step", 2.0, "That PGD's step, in /255.",
                     lower_bound=0)
  flags.DEFINE_integer("eval_noise_draws", 3, "Independent noisy passes per "
                       "final accuracy.", lower_bound=1)


def config_from_flags():
  """flags -> a frozen, validated TrainConfig, with 'auto' values resolved."""
  finetune_epochs = FLAGS.finetune_epochs
  if finetune_epochs < 0:
    finetune_epochs = (0 if FLAGS.prune_schedule == "none"
                       else max(1, FLAGS.epochs // 8))
  try:
    milestones = tuple(float(m) for m in FLAGS.lr_milestones)
  except ValueError:
    raise config_lib.ConfigError(
        f"--lr_milestones must be numbers, got {','.join(FLAGS.lr_milestones)}")
  try:
    milestone_epochs = tuple(int(m) for m in FLAGS.lr_milestone_epochs)
  except ValueError:
    raise config_lib.ConfigError(
        f"--lr_milestone_epochs must be epoch numbers, got "
        f"{','.join(FLAGS.lr_milestone_epochs)}")
  return config_lib.TrainConfig(
      data=dataclasses.replace(_cli.data_config_from_flags(),
                               validation_size=FLAGS.validation_size),
      model=config_lib.ModelConfig(name=FLAGS.model, noise=FLAGS.noise,
                                   alpha_init=FLAGS.alpha_init),
      attack=config_lib.AttackConfig(eps=FLAGS.eps / 255,
                                     step_size=FLAGS.eps_step / 255,
                                     steps=FLAGS.pgd_steps,
                                     rand_init=FLAGS.rand_init),
      loss=config_lib.LossConfig(
          adversarial=FLAGS.adversarial, clean_weight=FLAGS.clean_weight,
          adv_weight=FLAGS.adv_weight, adv_delay_epochs=FLAGS.adv_delay_epochs,
          attack_true_labels=FLAGS.attack_true_labels,
          lambda_l1=FLAGS.lambda_l1, lambda_group=FLAGS.lambda_group,
          weight_decay=FLAGS.weight_decay),
      optimizer=config_lib.OptimizerConfig(
          learning_rate=FLAGS.lr, momentum=FLAGS.momentum,
          lr_milestones=milestones, lr_gamma=FLAGS.lr_gamma,
          epochs=FLAGS.epochs, finetune_epochs=finetune_epochs,
          finetune_lr=FLAGS.finetune_lr, lr_schedule=FLAGS.lr_schedule,
          lr_milestone_epochs=milestone_epochs),
      prune=config_lib.PruneConfig(
          schedule=FLAGS.prune_schedule, target_sparsity=FLAGS.target_sparsity,
          begin_epoch=FLAGS.prune_begin_epoch, end_epoch=FLAGS.prune_end_epoch,
          frequency=FLAGS.prune_frequency, noise_std=FLAGS.noise_std,
          structure=FLAGS.prune_structure,
          channel_multiple=FLAGS.channel_multiple),
      output_dir=FLAGS.output_dir,
      eval_noise_draws=FLAGS.eval_noise_draws,
      seed=FLAGS.seed,
      mixed_precision=FLAGS.mixed_precision,
      jit_compile=FLAGS.jit_compile,
      strategy=FLAGS.strategy,
      tpu=FLAGS.tpu,
      init_from=FLAGS.init_from,
      validation_pgd_steps=FLAGS.validation_pgd_steps,
      validation_step_size=FLAGS.validation_eps_step / 255,
  ).validate()


def main(argv):
  if len(argv) > 1:
    _cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    config = config_from_flags()
  except config_lib.ConfigError as e:
    _cli.fail(str(e))
  # Cheap checks of paths, before anything heavy is loaded.
  _cli.check_image_folder(config.data.image_folder)
  _cli.check_output_dir(config.output_dir)

  _cli.quiet_tensorflow_startup()  # heavy imports only after the checks
  # Checkpoints of distributed variables log every save at INFO.
  absl_logging.set_verbosity(absl_logging.WARNING)
  from rsr_tf import data as data_lib  # noqa: E402
  from rsr_tf import experiment  # noqa: E402
  try:
    experiment.run(config)
  except (data_lib.DataError, experiment.RunError) as e:
    _cli.fail(str(e))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
