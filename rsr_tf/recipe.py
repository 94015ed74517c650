"""The paper's whole recipe in memory: RSR training, one-shot prune, fine-tune, strip."""

import dataclasses
import sys
from typing import Callable, Optional

import rsr_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from rsr_tf import channels
from rsr_tf import config as config_lib
from rsr_tf import convert
from rsr_tf import layers as rsr_layers
from rsr_tf import pruning
from rsr_tf import training

PRUNE_SCHEDULES = config_lib.PRUNE_SCHEDULES
PRUNE_STRUCTURES = config_lib.PRUNE_STRUCTURES


class TrainingError(RuntimeError):
  """Training stopped (the loss went non-finite); the message is one line."""


@dataclasses.dataclass
class Phase:
  """What a `phase_hook` is told about a phase before its `fit`.

  Attributes:
    name: "train" (regularised training) or "finetune" (at the target
      sparsity, masks fixed).
    model: the backbone this phase trains; in "finetune" (and in "train"
      under polynomial pruning) it is in tfmot pruning wrappers.
    optimizer: the optimizer this phase trains with.
    first_epoch: global 0-based index of the phase's first epoch.
    last_epoch: one past its last.
  """
  name: str
  model: keras.Model
  optimizer: keras.optimizers.Optimizer
  first_epoch: int
  last_epoch: int


@dataclasses.dataclass
class RSRResult:
  """What `train_rsr` returns.

  Attributes:
    model: the stripped model (pruned unless `prune_schedule="none"`),
      mapping [0, 1] images to logits.
    history: {metric: [value per epoch]} over the epochs this call trained,
      phase 1 then phase 2 (epochs skipped by a hook are absent).
    epochs: the global 0-based index of each entry of `history`.
    sparsity: `pruning.measured_sparsity(model)`, on the stripped kernels.
    layer_sparsity: the one-shot prune's per-layer fractions, or None.
    images_per_second: {phase: [training images/s per epoch trained]}.
    images_per_epoch: the training images one epoch steps through (batches
      times the global batch), which those rates count.
    stopped_early: the phases a callback stopped before their last epoch.
    channel_plan: the `channels.ChannelPlan` of a channel prune, else None.
    after_prune: validation metrics (clean_accuracy, pgd_accuracy, ...) of
      the one-shot pruned model before fine-tuning; None without validation
      data, without fine-tuning, or when fine-tuning resumed.
  """
  model: keras.Model
  history: dict
  epochs: list
  sparsity: dict
  layer_sparsity: Optional[dict]
  images_per_second: dict
  stopped_early: list
  after_prune: Optional[dict] = None
  channel_plan: Optional[object] = None
  images_per_epoch: Optional[int] = None


def _check(ok, message):
  if not ok:
    raise ValueError(message)


def _as_dataset(data, batch_size, training_split, seed):
  """A tf.data pipeline from a Dataset or an (images, labels) pair."""
  if data is None or isinstance(data, tf.data.Dataset):
    return data
  if isinstance(data, (tuple, list)) and len(data) == 2:
    images = np.asarray(data[0], np.float32)
    labels = np.asarray(data[1]).astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if training_split:
      ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=training_split).prefetch(
        tf.data.AUTOTUNE)
  raise ValueError("data must be a tf.data.Dataset of (images, labels) "
                   f"batches or an (images, labels) pair, got {type(data).__name__}")


def _steps_per_epoch(dataset, steps_per_epoch):
  if steps_per_epoch:
    return int(steps_per_epoch)
  count = int(dataset.cardinality())
  if count < 0:
    raise ValueError("train_data has unknown or infinite length; pass "
                     "steps_per_epoch")
  if count == 0:
    raise ValueError("train_data is empty (no full batch)")
  return count


def train_rsr(model, train_data, validation_data=None, *, epochs=160,
              target_sparsity=0.85, finetune_epochs=None,
              prune_schedule="oneshot", prune_structure="unstructured",
              channel_multiple=config_lib.CHANNEL_MULTIPLE, prune_begin_epoch=0,
              prune_end_epoch=None, prune_frequency=100,
              lambda_l1=5e-6, lambda_group=0.0, weight_decay=3e-4,
              eps=8 / 255, step_size=2 / 255, steps=7, rand_init=True,
              adversarial=True, adv_delay_epochs=None, clean_weight=0.5,
              adv_weight=0.5, attack_true_labels=False, learning_rate=0.1,
              momentum=0.9, lr_milestones=(0.5, 0.75), lr_gamma=0.1,
              finetune_lr=0.01, lr_schedule="per_phase",
              lr_milestone_epochs=(), noise_std="all",
              validation_pgd_steps=0, validation_step_size=2 / 255,
              evaluate_after_prune=True, batch_size=128,
              steps_per_epoch=None,
              callbacks=None, phase_hook: Optional[Callable] = None,
              initial_epoch=0, jit_compile=False, verbose=1, seed=0,
              log: Optional[Callable] = None):
  """Trains `model` with RSR, prunes it once, fine-tunes it and strips it.

  Phase 1 ("train", epochs 0 .. epochs-1): natural training for
  `adv_delay_epochs`, then PGD adversarial training, both with the lasso and
  weight decay on every Conv2D, DepthwiseConv2D and Dense kernel (see
  `RSRTrainer`). Then one global magnitude threshold removes
  `target_sparsity` of all kernel weights (`prune_global`). Phase 2
  ("finetune", epochs `epochs` .. `epochs + finetune_epochs - 1`) trains the
  sparse network at `finetune_lr` with the masks fixed. The result is
  stripped of the pruning wrappers. Nothing is written to disk.

  With `prune_schedule="polynomial"` tfmot prunes gradually during phase 1
  instead (from 0 at `prune_begin_epoch` to the target at `prune_end_epoch`),
  and phase 2 fine-tunes at that sparsity. `"none"` trains dense: phase 1
  only.

  What callbacks see: every callback in `callbacks` is passed to both
  phases' `fit`, so Keras calls its `on_train_begin`/`on_train_end` once per
  phase. `callback.model` is the `RSRTrainer`; the network being trained is
  `callback.model.backbone` (in pruning wrappers in phase 2; save that, or
  `pruning.strip` of it, not the trainer). Epoch numbers are global: phase
  2's first epoch is `epochs`. Logs hold loss, clean_loss, adv_loss, penalty,
  clean_accuracy, adv_accuracy, l1_norm, sparsity (zeros in the kernels),
  mean_alpha, images_per_second and, with validation data, val_clean_loss
  and val_clean_accuracy.

  EarlyStopping in phase 1 ends phase 1 only: the model is pruned where it
  stopped (with `restore_best_weights`, at its best weights) and phase 2
  still runs all its `finetune_epochs`, numbered from `epochs`. Keras resets
  EarlyStopping when phase 2's `fit` begins, so the same instance may stop
  phase 2 too. `result.stopped_early` names the phases that stopped early.

  Resuming: `phase_hook(phase)` is called before each phase's `fit` with a
  `Phase` (its name, model, optimizer and epoch range). It returns
  `(start_epoch, extra_callbacks)`: the global epoch to start from (after
  restoring a checkpoint of `phase.model` and `phase.optimizer`, say) and
  callbacks for that phase only (checkpointing, logging). A start at or past
  `phase.last_epoch` skips the phase's training; after phase 1 the model
  must then hold its finished phase-1 weights. `initial_epoch` is the
  default start of phase 1 without a hook.

  Args:
    model: a Sequential or functional tf_keras model from [0, 1] images to
      logits, noisy (`add_weight_noise`) or not. A final softmax is
      dropped, with a warning: training and attacks use the logits.
    train_data: a tf.data.Dataset of (images, labels) batches, or an
      (images, labels) pair of arrays (batched by `batch_size`, shuffled).
    validation_data: the same kinds, evaluated after every epoch; optional.
    epochs: phase-1 epochs.
    target_sparsity: fraction of kernel weights removed, in [0, 1).
    finetune_epochs: phase-2 epochs; None: an eighth of `epochs` (the
      paper's 20 of 160) when pruning.
    prune_schedule: "oneshot" (the paper), "polynomial" or "none".
    prune_structure: "unstructured" (the paper: single weights, masks fixed)
      or "channel" (one-shot only): whole filters, chosen by
      `rsr_tf.channels.plan` until `target_sparsity` of the prunable MACs is
      gone, and the model rebuilt physically narrower (`channels.rebuild`);
      phase 2 fine-tunes the narrow model, and `RSRResult.channel_plan`
      says what was removed. Pair it with `lambda_group`, which drives
      whole filters toward zero in phase 1.
    channel_multiple: kept widths are rounded up to multiples of this.
    prune_begin_epoch, prune_end_epoch, prune_frequency: the polynomial
      schedule (end None: the last epoch; frequency in training calls).
    lambda_l1, lambda_group, weight_decay: the kernel penalty.
    eps, step_size, steps, rand_init, adversarial, clean_weight, adv_weight,
      attack_true_labels: PGD training, as `RSRTrainer`.
    adv_delay_epochs: natural epochs before PGD starts; None scales the
      paper's 5 of 160 to `epochs`.
    learning_rate: SGD (Nesterov) learning rate of phase 1, multiplied by
      `lr_gamma` at each of `lr_milestones` (fractions of `epochs`); or a
      `keras.optimizers.schedules.LearningRateSchedule`, used as it is.
    momentum: SGD momentum of both phases.
    finetune_lr: phase 2's constant learning rate ("per_phase" only).
    lr_schedule: "per_phase" (the above: step decay over phase 1, then
      `finetune_lr`), or one curve over the global epoch of both phases,
      which a pruned variant follows on through fine-tuning, so variants
      of equal total epochs get equal rates: "step" (times `lr_gamma` at
      each of `lr_milestone_epochs`, global epoch numbers) or "cosine" (to
      0 at `epochs + finetune_epochs`).
    lr_milestone_epochs: the "step" schedule's milestones.
    validation_pgd_steps, validation_step_size: PGD on the true labels of
      `validation_data` after every epoch (`val_pgd_accuracy`) and after
      the one-shot prune, as `RSRTrainer`; 0: clean accuracy only.
    evaluate_after_prune: evaluate `validation_data` on the pruned model
      before fine-tuning (`RSRResult.after_prune`).
    noise_std: from the prune on, the noisy layers' sigma is the std over
      "all" kernel weights (the formula as written; the pruned zeros count)
      or over the "kept" ones. Phase 1 always uses "all".
    batch_size: batch size for array data (a Dataset keeps its own).
    steps_per_epoch: train steps per epoch; None counts `train_data`.
    callbacks: Keras callbacks for both phases.
    phase_hook: see "Resuming" above.
    initial_epoch: phase 1's first epoch when there is no hook.
    jit_compile: XLA-compile the train step.
    verbose: Keras `fit` verbosity; 0 also silences the progress lines.
    seed: shuffle seed for array data.
    log: receives one progress line at a time (default: stderr when
      verbose).

  Returns:
    An `RSRResult`.

  Raises:
    convert.ModelError: a subclassed model, or no layer to prune.
    ValueError: an argument out of range.
    TrainingError: the loss stopped being finite.
  """
  _check(prune_structure in PRUNE_STRUCTURES,
         f"prune_structure must be one of {', '.join(PRUNE_STRUCTURES)}, got "
         f"{prune_structure!r}")
  _check(prune_structure == "unstructured" or prune_schedule == "oneshot",
         "prune_structure='channel' prunes once, after phase 1: it needs "
         "prune_schedule='oneshot'")
  _check(prune_schedule in PRUNE_SCHEDULES,
         f"prune_schedule must be one of {', '.join(PRUNE_SCHEDULES)}, got "
         f"{prune_schedule!r}")
  _check(isinstance(epochs, int) and epochs >= 1, f"epochs must be an int >= 1, "
         f"got {epochs!r}")
  _check(0 <= target_sparsity < 1,
         f"target_sparsity must be in [0, 1), got {target_sparsity}")
  if finetune_epochs is None:
    finetune_epochs = 0 if prune_schedule == "none" else max(1, epochs // 8)
  _check(finetune_epochs >= 0, f"finetune_epochs must be >= 0, got "
         f"{finetune_epochs}")
  _check(prune_schedule != "none" or finetune_epochs == 0,
         "finetune_epochs needs pruning; prune_schedule='none' trains dense")
  if log is None:
    log = ((lambda line: print(line, file=sys.stderr, flush=True)) if verbose
           else (lambda line: None))
  convert.check_functional(model, "train_rsr")
  model = convert.logits_model(model, warn_as="train_rsr")
  if prune_schedule != "none" and not pruning.prunable_layers(model):
    raise convert.ModelError(f"train_rsr: {model.name!r} has no Conv2D, "
                             "DepthwiseConv2D or Dense layer to prune")

  train_ds = _as_dataset(train_data, batch_size, True, seed)
  val_ds = _as_dataset(validation_data, batch_size, False, seed)
  steps = int(steps)
  batches = _steps_per_epoch(train_ds, steps_per_epoch)
  images_per_epoch = batches * _batch_of(train_ds, batch_size)
  adversarial_start = config_lib.adversarial_start_epoch(
      adversarial, steps, adv_delay_epochs, epochs)
  trainer_args = dict(eps=eps, step_size=step_size, steps=steps,
                      rand_init=rand_init, adversarial=adversarial,
                      clean_weight=clean_weight, adv_weight=adv_weight,
                      attack_true_labels=attack_true_labels,
                      lambda_l1=lambda_l1, lambda_group=lambda_group,
                      weight_decay=weight_decay,
                      validation_pgd_steps=validation_pgd_steps,
                      validation_step_size=validation_step_size)
  history = _History()
  after_prune = {}

  def fit(phase_name, backbone, optimizer, first, last):
    trainer = training.RSRTrainer(backbone, **trainer_args)
    trainer.compile(optimizer=optimizer, jit_compile=jit_compile)
    phase = Phase(phase_name, backbone, trainer.optimizer, first, last)
    start, extra = (phase_hook(phase) if phase_hook
                    else (initial_epoch if phase_name == "train" else first, []))
    start = max(first, int(start))
    if start >= last:
      log(f"{phase_name}: already complete (epochs {first + 1}-{last})")
      return []
    if start > first:
      log(f"{phase_name}: resuming after epoch {start}")
    elif (phase_name == "finetune" and val_ds is not None
          and evaluate_after_prune):
      # What the prune alone costs, before fine-tuning recovers it.
      after_prune.update(trainer.evaluate(val_ds, return_dict=True, verbose=0))
      log("after the prune, before fine-tuning: " + ", ".join(
          f"val_{k} {v:.4f}" for k, v in after_prune.items()))
    trainer.adversarial_active = training.AdversarialStart.active_at(
        trainer, start, adversarial_start)
    throughput = training.Throughput(images_per_epoch)
    stop = training.StopOnNaN()
    phase_callbacks = [stop, throughput] + list(extra) + list(callbacks or [])
    if adversarial_start is not None:
      phase_callbacks.insert(0, training.AdversarialStart(adversarial_start))
    if pruning.is_pruned(backbone):
      phase_callbacks += pruning.callbacks()
    result = trainer.fit(train_ds, validation_data=val_ds, epochs=last,
                         initial_epoch=start, steps_per_epoch=steps_per_epoch,
                         callbacks=phase_callbacks, verbose=verbose)
    if stop.message:
      raise TrainingError(f"{phase_name}: {stop.message}")
    history.add(result, start)
    if len(result.epoch) < last - start:
      history.stopped_early.append(phase_name)
    return throughput.per_epoch()

  if prune_schedule == "oneshot" and prune_structure == "channel":
    # Whether the target is within reach depends on the architecture alone:
    # say so now, not after phase 1.
    channels.plan(model, target_sparsity, multiple=channel_multiple)
  recipe = "+".join(part for part, on in (
      ("PNI", bool(rsr_layers.alphas(model))),
      ("PGD-AT", adversarial_start is not None),
      ("lasso", lambda_l1 > 0 or lambda_group > 0)) if on) or "natural"
  log(f"phase 1: {recipe} training, {epochs} epochs; adversarial from epoch "
      f"{'never' if adversarial_start is None else adversarial_start + 1}")
  backbone = model
  if prune_schedule == "polynomial":
    end_epoch = prune_end_epoch or epochs
    _check(0 <= prune_begin_epoch < end_epoch <= epochs,
           f"prune_begin_epoch ({prune_begin_epoch}) and prune_end_epoch "
           f"({end_epoch}) must satisfy 0 <= begin < end <= epochs ({epochs})")
    begin = training.training_calls_before(prune_begin_epoch, batches,
                                           adversarial_start)
    end = training.training_calls_before(end_epoch, batches, adversarial_start)
    backbone = pruning.prune(backbone, pruning.polynomial_schedule(
        target_sparsity, begin, end, prune_frequency))
    log(f"pruning: polynomial to {target_sparsity:.0%} between training calls "
        f"{begin} and {end}")
  schedule, finetune_schedule = phase_learning_rates(
      lr_schedule, learning_rate, epochs, finetune_epochs, batches,
      lr_milestones, lr_gamma, finetune_lr, lr_milestone_epochs)
  rates = {"train": fit("train", backbone, training.sgd(schedule, momentum),
                        0, epochs)}

  layer_sparsity = channel_plan = None
  if prune_schedule == "oneshot" and prune_structure == "channel":
    channel_plan = channels.plan(backbone, target_sparsity,
                                 multiple=channel_multiple)
    backbone = channels.rebuild(backbone, channel_plan)
    log(f"pruning: {channel_plan.macs_removed:.0%} of the conv/dense MACs "
        f"removed by one global filter threshold ({channel_plan.params_before:,}"
        f" -> {channel_plan.params_after:,} parameters); widths " + ", ".join(
            f"{k} {a}->{b}" for k, (a, b) in channel_plan.widths.items() if a != b)
        + (f"; kept whole: {len(channel_plan.skipped)} conv(s)"
           if channel_plan.skipped else ""))
  elif prune_schedule == "oneshot":
    layer_sparsity = pruning.global_magnitude_sparsities(backbone,
                                                         target_sparsity)
    backbone = pruning.prune_global(backbone, target_sparsity)
    log(f"pruning: one global magnitude threshold for {target_sparsity:.0%}, "
        "masks fixed from here; per layer: " + ", ".join(
            f"{k} {v:.2f}" for k, v in layer_sparsity.items()))
  if prune_schedule != "none" and noise_std != "all" and not channel_plan:
    rsr_layers.set_noise_std(backbone, noise_std)
    log(f"noise: sigma over the {noise_std} weights of each kernel from here")
  if finetune_epochs:
    log(f"phase 2: fine-tune at the target sparsity, {finetune_epochs} epochs, "
        f"lr {finetune_lr if lr_schedule == 'per_phase' else lr_schedule + ' (continued)'}")
    rates["finetune"] = fit("finetune", backbone,
                            training.sgd(finetune_schedule, momentum), epochs,
                            epochs + finetune_epochs)
  final = pruning.strip(backbone) if pruning.is_pruned(backbone) else backbone
  return RSRResult(model=final, history=history.logs, epochs=history.epochs,
                   sparsity=pruning.measured_sparsity(final),
                   layer_sparsity=layer_sparsity, images_per_second=rates,
                   stopped_early=history.stopped_early,
                   after_prune=after_prune or None, channel_plan=channel_plan,
                   images_per_epoch=images_per_epoch)


LR_SCHEDULES = config_lib.LR_SCHEDULES


def phase_learning_rates(lr_schedule, learning_rate, epochs, finetune_epochs,
                         steps_per_epoch, lr_milestones=(0.5, 0.75),
                         lr_gamma=0.1, finetune_lr=0.01,
                         lr_milestone_epochs=()):
  """(phase-1, phase-2) learning rates of `train_rsr`; see its docstring."""
  if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
    return learning_rate, finetune_lr
  _check(lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of "
         f"{', '.join(LR_SCHEDULES)}, got {lr_schedule!r}")
  if lr_schedule == "per_phase":
    return (training.step_decay(learning_rate, epochs, steps_per_epoch,
                                lr_milestones, lr_gamma), finetune_lr)
  total = epochs + finetune_epochs
  _check(lr_schedule != "step" or (
      list(lr_milestone_epochs) == sorted(lr_milestone_epochs)
      and all(0 < m < total for m in lr_milestone_epochs)),
         f"lr_milestone_epochs must be increasing epochs in (0, {total}), got "
         f"{list(lr_milestone_epochs)}")
  return tuple(training.EpochSchedule(
      lr_schedule, learning_rate, total, steps_per_epoch, first_epoch=first,
      milestone_epochs=lr_milestone_epochs, gamma=lr_gamma)
               for first in (0, epochs))


def _batch_of(dataset, default):
  """The batch size of a batched dataset (its first axis), else `default`."""
  spec = dataset.element_spec
  first = spec[0] if isinstance(spec, tuple) else spec
  size = first.shape[0] if first.shape.rank else None
  return int(size) if size else default


class _History:
  """Per-epoch logs of every `fit`, joined in epoch order."""

  def __init__(self):
    self.logs, self.epochs, self.stopped_early = {}, [], []

  def add(self, result, start):
    done = len(self.epochs)
    for key, values in result.history.items():
      self.logs.setdefault(key, [float("nan")] * done).extend(
          float(v) for v in values)
    self.epochs.extend(result.epoch)
    for values in self.logs.values():  # a key this phase did not log
      values.extend([float("nan")] * (len(self.epochs) - len(values)))
