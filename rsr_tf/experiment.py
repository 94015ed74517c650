"""One RSR run end to end: data, model, training, pruning, evaluation, outputs."""

import csv
import dataclasses
import io
import json
import os
import sys
import time

import rsr_tf  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from rsr_tf import channels
from rsr_tf import config as config_lib
from rsr_tf import data as data_lib
from rsr_tf import distribute
from rsr_tf import evaluation
from rsr_tf import layers as rsr_layers
from rsr_tf import models
from rsr_tf import outputs
from rsr_tf import pipelines
from rsr_tf import plotting
from rsr_tf import pruning
from rsr_tf import recipe
from rsr_tf import training


class RunError(ValueError):
  """The run cannot start as asked; the message is one line for the user."""


def _log(message):
  print(message, file=sys.stderr, flush=True)


def _phase_hook(config):
  """train_rsr's phase hook: checkpoints, logs and resume in `output_dir`.

  Each phase keeps its latest model + optimizer state in
  `checkpoints/<phase>/`, one row per epoch in `history.csv` and TensorBoard
  logs; a rerun restores the checkpoint and carries on after its epoch.
  With `init_from`, phase 1 is another run's finished one.
  """
  out = config.output_dir

  def hook(phase):
    if phase.name == "train" and config.init_from:
      _restore_phase_one(config, phase.model)
      return phase.last_epoch, []
    checkpoint = training.Checkpoint(
        os.path.join(out, "checkpoints", phase.name), phase.model,
        phase.optimizer)
    start = max(phase.first_epoch,
                checkpoint.restore(last_epoch=phase.last_epoch))
    if start > phase.first_epoch:
      _log(f"{phase.name}: checkpoint {checkpoint.manager.latest_checkpoint}")
    if start < phase.last_epoch:
      _truncate_history(os.path.join(out, "history.csv"), start)
    return start, [
        # The log row is written before the checkpoint, so every checkpointed
        # epoch has its row; rows past the checkpoint are cut on resume.
        keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=True),
        checkpoint,
        keras.callbacks.TensorBoard(os.path.join(out, "tensorboard"),
                                    write_graph=False, profile_batch=0),
    ]
  return hook


def _read_history(path):
  """Per-epoch logs of every phase and every resumed process, from the CSV."""
  history = {}
  if not os.path.exists(path):
    return history
  with open(path) as f:
    for row in csv.DictReader(f):
      for key, value in row.items():
        if key != "epoch":
          history.setdefault(key, []).append(float(value) if value else float("nan"))
  return history


def _earlier_processes(config, history, result):
  """The epochs of this run that an earlier, resumed process trained.

  Returns None when this process trained every epoch, else their count and
  their training loops' seconds, recovered from the images/s that
  history.csv logged for them; their validation and start-up are not in it.
  Epochs restored by `init_from` belong to another run and are not counted.
  """
  restored = config.optimizer.epochs if config.init_from else 0
  rates = history.get("images_per_second", [])
  here = set(result.epochs)
  earlier = [i for i in range(restored, len(rates)) if i not in here]
  if not earlier:
    return None
  return {"epochs": len(earlier),
          "training_seconds": sum(result.images_per_epoch / rates[i]
                                  for i in earlier)}


def _truncate_history(path, epochs):
  """Keeps the log rows of the first `epochs` epochs (0-based `epoch` < epochs)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = list(csv.reader(f))
  if not rows:
    return
  kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) < epochs]
  if len(kept) != len(rows):
    with io.StringIO() as buffer:
      csv.writer(buffer, lineterminator="\n").writerows(kept)
      outputs.write_text_atomic(path, buffer.getvalue())


def _start_or_resume(config):
  """Refuses to mix two configurations in one output folder.

  A folder with checkpoints is resumed only by the same configuration; a
  fresh run starts from a clean history.
  """
  out = config.output_dir
  saved = os.path.join(out, "config.json")
  has_checkpoints = os.path.isdir(os.path.join(out, "checkpoints"))
  if has_checkpoints and os.path.exists(saved):
    with open(saved) as f:
      differences = config.training_differences(json.load(f))
    if differences:
      raise RunError(
          f"{out} holds checkpoints of a run with a different configuration "
          f"({', '.join(differences)}; see {saved}); use another --output_dir "
          "or delete that one")
  elif os.path.exists(os.path.join(out, "history.csv")):
    os.remove(os.path.join(out, "history.csv"))
  outputs.write_text_atomic(saved, config.to_json())


DATA_FINGERPRINT = "data_fingerprint.json"


def _check_same_data(config, data):
  """Refuses to resume, or to prune another run, on other data.

  The configuration may name the data at another path (another machine);
  its fingerprint must still be the one the checkpoints were trained on.
  Runs saved before the fingerprint existed are trusted and get one.
  """
  mine = data_lib.fingerprint(data)
  out = config.output_dir
  earlier = []
  if os.path.isdir(os.path.join(out, "checkpoints")):
    earlier.append((out, "holds checkpoints trained"))
  if config.init_from:
    earlier.append((config.init_from, "(--init_from) was trained"))
  for folder, what in earlier:
    path = os.path.join(folder, DATA_FINGERPRINT)
    if not os.path.exists(path):
      continue
    with open(path) as f:
      saved = json.load(f)
    if saved != mine:
      changed = ", ".join(k for k in mine if saved.get(k) != mine[k])
      raise RunError(
          f"{folder} {what} on other data than {data.source} (they differ "
          f"in {changed}; see {path}); pass the same data and limits, or use "
          "another --output_dir")
  outputs.write_json_atomic(os.path.join(out, DATA_FINGERPRINT), mine)


def _restore_phase_one(config, backbone):
  """Loads another run's finished phase 1 into `backbone`, with its history.

  Raises:
    RunError: that run is missing, unfinished, or trained differently.
  """
  source = config.init_from
  saved = os.path.join(source, "config.json")
  if not os.path.exists(saved):
    raise RunError(f"--init_from {source}: no config.json; name the output "
                   "folder of a finished run")
  with open(saved) as f:
    if not config.same_phase_one_as(json.load(f)):
      raise RunError(f"--init_from {source} was trained with other settings "
                     f"(see {saved}); only pruning and fine-tuning may differ")
  checkpoint = training.Checkpoint(
      os.path.join(source, "checkpoints", "train"), backbone, None)
  epochs = checkpoint.restore()
  if epochs < config.optimizer.epochs:
    raise RunError(f"--init_from {source}: phase 1 has {epochs} of "
                   f"{config.optimizer.epochs} epochs; finish that run first")
  history = os.path.join(config.output_dir, "history.csv")
  if not os.path.exists(history):
    with open(os.path.join(source, "history.csv")) as f:
      outputs.write_text_atomic(history, f.read())
    _truncate_history(history, config.optimizer.epochs)  # phase 1's rows only
  _log(f"phase 1: {epochs} epochs restored from "
       f"{checkpoint.manager.latest_checkpoint}")


def _train_and_prune(config, build, train_ds, validation_ds):
  """Both phases through `recipe.train_rsr`, in the strategy's scope.

  Returns:
    The `recipe.RSRResult`.
  """
  keras.mixed_precision.set_global_policy(
      "float32" if config.mixed_precision == "none" else config.mixed_precision)
  backbone = build()
  _log(f"model: {config.model.name}, {backbone.count_params():,} parameters, "
       f"noise={config.model.noise}, input {list(backbone.input_shape[1:])}")
  opt, loss, attack, prune = (config.optimizer, config.loss, config.attack,
                              config.prune)
  try:
    return recipe.train_rsr(
        backbone, train_ds, validation_ds, epochs=opt.epochs,
        target_sparsity=prune.target_sparsity,
        finetune_epochs=opt.finetune_epochs, prune_schedule=prune.schedule,
        prune_begin_epoch=prune.begin_epoch,
        prune_end_epoch=prune.end_epoch or None,
        prune_frequency=prune.frequency, prune_structure=prune.structure,
        channel_multiple=prune.channel_multiple,
        lambda_l1=loss.lambda_l1,
        lambda_group=loss.lambda_group, weight_decay=loss.weight_decay,
        eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
        rand_init=attack.rand_init, adversarial=loss.adversarial,
        adv_delay_epochs=config.adversarial_start_epoch(),
        clean_weight=loss.clean_weight, adv_weight=loss.adv_weight,
        attack_true_labels=loss.attack_true_labels,
        learning_rate=opt.learning_rate, momentum=opt.momentum,
        lr_milestones=opt.lr_milestones, lr_gamma=opt.lr_gamma,
        finetune_lr=opt.finetune_lr, lr_schedule=opt.lr_schedule,
        lr_milestone_epochs=opt.lr_milestone_epochs, noise_std=prune.noise_std,
        validation_pgd_steps=config.validation_pgd_steps,
        validation_step_size=config.validation_step_size,
        # Only runs that hold out validation images: the extra pass would
        # change the random streams of the runs committed before it.
        evaluate_after_prune=config.data.validation_size > 0,
        phase_hook=_phase_hook(config),
        jit_compile=config.jit_compile,
        verbose=2 if os.environ.get("CI") else 1, log=_log)
  except RunError:  # from the phase hook, already one line
    raise
  except (recipe.TrainingError, ValueError) as e:  # ModelError is a ValueError
    raise RunError(str(e).splitlines()[0]) from e


def run(config, argv=None):
  """Trains, prunes and evaluates one model; writes outputs; returns metrics.

  Args:
    config: a `config.TrainConfig`; validated here.
    argv: the command line to record (defaults to sys.argv).

  Under a multi-worker strategy every worker calls this with the same
  configuration; the chief writes to `output_dir`, the others keep their
  checkpoints in `output_dir/workers/<task>/` and return None.

  Returns:
    The metrics dict also written to `<output_dir>/metrics.json`.
  """
  config.validate()
  # First: multi-worker and TPU strategies must set up the runtime before
  # any other TensorFlow work.
  try:
    strategy = distribute.make_strategy(config.strategy, config.tpu)
  except distribute.StrategyError as e:
    raise RunError(str(e)) from None
  chief = distribute.is_chief(strategy)
  chief_dir = config.output_dir
  if not chief:
    config = dataclasses.replace(
        config, output_dir=distribute.output_dir_for(strategy, config.output_dir))
  out = config.output_dir
  outputs.check_writable(out)
  _start_or_resume(config)
  started = time.perf_counter()
  keras.utils.set_random_seed(config.seed)

  data = data_lib.load(config.data)
  _check_same_data(config, data)
  _log(f"data: {data.source}, {len(data.train.labels)} train / "
       + (f"{len(data.validation)} validation (held out of train) / "
          if data.validation else "")
       + f"{len(data.test.labels)} eval images, {data.num_classes} classes")
  mean, std = data_lib.channel_stats(data.train.images)
  batch = config.data.batch_size  # global: fit splits it over the replicas
  _log(f"strategy: {config.strategy}, {distribute.describe(strategy)}; "
       f"global batch {batch}")
  train_ds = pipelines.train_pipeline(data.train, batch,
                                      seed=config.data.seed,
                                      augment=config.data.augment)
  eval_ds = pipelines.eval_pipeline(data.test, batch)
  # Per-epoch validation: held-out training images if asked for, else (as
  # the cpu budget always did) the eval split.
  validation_ds = (pipelines.eval_pipeline(data.validation, batch)
                   if data.validation else eval_ds)

  def build():
    try:
      return models.from_spec(config.model.name, data.image_shape,
                              data.num_classes, noise=config.model.noise,
                              alpha_init=config.model.alpha_init, mean=mean,
                              std=std)
    except ValueError as e:
      raise RunError(str(e).splitlines()[0]) from e

  # Variables made in the scope are mirrored over the replicas: the model,
  # tfmot's masks and step, the optimizer, the trainer's metrics.
  with strategy.scope():
    result = _train_and_prune(config, build, train_ds, validation_ds)
  rates, layer_sparsity = result.images_per_second, result.layer_sparsity
  opt = config.optimizer
  prune = config.prune
  adversarial_start = config.adversarial_start_epoch()
  history = _read_history(os.path.join(out, "history.csv"))

  final = result.model
  if config.mixed_precision != "none" or config.strategy != "default":
    # Deployments get a float32 model: mixed policies keep float32 variables,
    # so the same weights load into a float32 build of the same network.
    # Built outside the strategy, it holds plain variables, so evaluating and
    # saving it needs no other worker. Every worker reads the weights here:
    # batch-norm statistics are all-reduced on reading.
    keras.mixed_precision.set_global_policy("float32")
    plain_model = build()
    if result.channel_plan:  # the same narrow architecture, then its weights
      plain_model = channels.rebuild(plain_model, result.channel_plan)
    plain_model.set_weights(final.get_weights())
    final = plain_model
  if not chief:
    _log(f"training done; the chief writes the outputs to {chief_dir}")
    return None
  sparsity = pruning.measured_sparsity(final)
  _log(f"evaluating on {len(data.test.labels)} held-out images, "
       f"{config.eval_noise_draws} noise draws")
  clean = evaluation.accuracy_over_draws(final, eval_ds, config.eval_noise_draws,
                                         label="clean")
  check = final_check_attack(config)
  adversarial = evaluation.accuracy_over_draws(
      final, eval_ds, config.eval_noise_draws, attack=check,
      label=f"PGD-{check.steps}")
  alphas = [a.numpy() for a in rsr_layers.alphas(final)]

  metrics = {
      "clean_accuracy": clean,
      "pgd_accuracy": adversarial,
      "pgd": {"eps": check.eps, "step_size": check.step_size,
              "steps": check.steps, "rand_init": check.rand_init,
              "labels": "true", "model_mode": "inference, noise on"},
      "sparsity": sparsity,
      "oneshot_layer_sparsity": layer_sparsity,
      "channels": None if not result.channel_plan else {
          "macs_before": result.channel_plan.macs_before,
          "macs_after": result.channel_plan.macs_after,
          "macs_removed": result.channel_plan.macs_removed,
          "params_before": result.channel_plan.params_before,
          "params_after": result.channel_plan.params_after,
          "widths": {k: list(v) for k, v in result.channel_plan.widths.items()},
          "kept_whole": list(result.channel_plan.skipped)},
      "mean_alpha": (float(sum(a.sum() for a in alphas)
                           / sum(a.size for a in alphas)) if alphas else None),
      "alpha_per_layer": {layer.name: float(layer.alpha.numpy().mean())
                          for layer in rsr_layers.noisy_layers(final)
                          if layer.alpha is not None},
      "epochs": {"train": opt.epochs, "finetune": opt.finetune_epochs,
                 "adversarial_from_epoch": adversarial_start},
      # Per epoch, phase by phase. Epochs that trace a new train function (the
      # first, and the one where PGD starts) are slower; the last is steady.
      "validation": {
          "source": ("held out of the training images" if data.validation
                     else "the eval images"),
          "examples": len(data.validation or data.test),
          "after_prune": result.after_prune,
          "catastrophic_overfitting": catastrophic_overfitting(history)},
      "training_images_per_second": rates,
      "history": history,
      "model": {"spec": config.model.name,
                "input_shape": list(data.image_shape),
                "num_classes": data.num_classes},
      "data": {"source": data.source, "train_examples": len(data.train.labels),
               "eval_examples": len(data.test.labels),
               "class_names": list(data.class_names)},
      "parameters": final.count_params(),
      "distribution": {"strategy": config.strategy,
                       "replicas_in_sync": strategy.num_replicas_in_sync,
                       "global_batch": batch},
      # This process only; a resumed run adds `earlier_processes`.
      "wall_seconds": time.perf_counter() - started,
      "earlier_processes": _earlier_processes(config, history, result),
      "config": config.to_dict(),
      "provenance": outputs.provenance(argv),
  }
  outputs.save_model_atomic(final, os.path.join(out, "model.keras"))
  outputs.write_json_atomic(os.path.join(out, "metrics.json"), metrics)
  plotting.training_curves(
      history, os.path.join(out, "training_curves.png"),
      finetune_from=opt.epochs + 1 if opt.finetune_epochs else None,
      title=f"{config.model.name}, noise={config.model.noise}, "
            f"{prune.schedule} pruning to {prune.target_sparsity:.0%}")
  print(summary_table(metrics, out))
  return metrics


def final_check_attack(config):
  """The PGD of metrics.json: the validation check's if set, else training's."""
  if not config.validation_pgd_steps:
    return config.attack
  return config_lib.AttackConfig(eps=config.attack.eps,
                                 step_size=config.validation_step_size,
                                 steps=config.validation_pgd_steps,
                                 rand_init=True)


# A fall of validation PGD accuracy this large from its best, within a run,
# is what catastrophic overfitting looks like (Wong et al. 2020 saw ~40
# points within an epoch); ordinary epoch-to-epoch noise is a few points.
OVERFITTING_DROP = 0.15


def catastrophic_overfitting(history):
  """The first epoch whose val_pgd_accuracy fell OVERFITTING_DROP below the
  best before it, as {"epoch", "best", "fell_to"}; None if it never did."""
  values = history.get("val_pgd_accuracy", [])
  best = float("-inf")
  for epoch, value in enumerate(values):
    if value == value and value < best - OVERFITTING_DROP:  # not NaN
      return {"epoch": epoch + 1, "best": best, "fell_to": value}
    best = max(best, value) if value == value else best
  return None


def summary_table(metrics, output_dir):
  """The final table a user reads after a run."""
  def acc(entry):
    return f"{entry['mean'] * 100:6.2f} % ± {entry['std'] * 100:.2f}"
  pgd = metrics["pgd"]
  rates = metrics["training_images_per_second"]
  rows = [
      ("clean accuracy", acc(metrics["clean_accuracy"])),
      (f"PGD-{pgd['steps']} accuracy (eps {pgd['eps'] * 255:g}/255)",
       acc(metrics["pgd_accuracy"])),
      ("sparsity (stripped kernels)", f"{metrics['sparsity']['overall'] * 100:6.2f} %"),
      ("mean alpha", "n/a" if metrics["mean_alpha"] is None
       else f"{metrics['mean_alpha']:.4f}"),
      ("training images/s (last epoch)",
       ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items() if v)),
      ("eval images x noise draws", f"{metrics['clean_accuracy']['examples']} x "
       f"{len(metrics['clean_accuracy']['per_draw'])}"),
  ]
  width = max(len(name) for name, _ in rows)
  lines = [f"{name:<{width}}  {value}" for name, value in rows]
  lines.append(f"outputs: {output_dir}/ model.keras, metrics.json, "
               "training_curves.png, tensorboard/")
  rule = "-" * max(len(line) for line in lines)
  return "\n".join([rule] + lines + [rule])
