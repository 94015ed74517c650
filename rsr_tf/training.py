"""The RSR trainer: a `train_step` with PGD, weight noise, lasso and pruning."""

import math
import numbers
import time

import rsr_tf  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from rsr_tf import attacks
from rsr_tf import convert
from rsr_tf import layers as rsr_layers
from rsr_tf import pruning
from rsr_tf import regularizers


def _cross_entropy(labels, logits):
  return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.cast(labels, tf.int64), logits=tf.cast(logits, tf.float32)))


def _accuracy_count(labels, logits):
  return tf.cast(tf.equal(tf.argmax(logits, -1), tf.cast(labels, tf.int64)),
                 tf.float32)


def _batch_size(labels):
  return tf.cast(tf.shape(labels)[0], tf.float32)


def _replica_objective(data_loss, penalty, labels, replicas):
  """This replica's part of the global-batch objective, for its gradient.

  The optimizer sums the replicas' gradients, so the parts must add up to
  the single-device objective on the whole global batch: each replica
  contributes the sum of its examples' losses divided by the global batch
  size (its mean loss times its share of the batch), and 1/replicas of the
  kernel penalty, which every replica computes in full from the same
  weights.
  """
  local = _batch_size(labels)
  global_batch = tf.distribute.get_replica_context().all_reduce(
      tf.distribute.ReduceOp.SUM, local)
  return data_loss * (local / global_batch) + penalty / replicas


# tfmot advances its pruning step on every `training=True` call of a wrapped
# layer; an adversarial train step calls the model twice (clean, then x_adv).
CALLS_PER_STEP = {False: 1, True: 2}


def training_calls_before(epoch, steps_per_epoch, adversarial_start):
  """tfmot's pruning step when 0-based `epoch` begins: it counts training calls.

  Args:
    epoch: the epoch about to begin.
    steps_per_epoch: train steps per epoch.
    adversarial_start: first adversarial epoch, or None for never.
  """
  return sum(steps_per_epoch * CALLS_PER_STEP[
      adversarial_start is not None and e >= adversarial_start]
             for e in range(epoch))


def _check_argument(ok, name, rule, value):
  if not ok:
    raise ValueError(f"{name} must be {rule}, got {value!r}")


class RSRTrainer(keras.Model):
  """Wraps a functional backbone and trains it with the RSR objective.

  loss = clean_weight * CE(x) + adv_weight * CE(x_adv) + penalty, where x_adv
  is L-inf PGD made by the backbone in inference mode (weight noise on), and
  penalty = lambda_l1 * sum|w| + lambda_group * sum_f ||w_f|| +
  weight_decay / 2 * sum w^2 over every prunable kernel (Conv2D,
  DepthwiseConv2D and Dense, noisy or not; never biases, batch norm or the
  noise scales), plus the backbone's own `losses` (its regularizers and
  `add_loss` terms). Without adversarial examples (`adversarial=False`,
  `steps=0`, or before `adversarial_active` is switched on) the loss is
  CE(x) plus the penalty: natural training.

  Under a tf.distribute strategy (build the backbone, the optimizer and this
  trainer in its scope) each replica gets its part of the global batch, and
  the summed gradients equal one device's on the whole batch (see
  `_replica_objective`), except that a plain BatchNormalization normalises
  each replica's part by its own statistics. Logged metrics are aggregated
  over the replicas.

  Args:
    model: the backbone to train, mapping [0, 1] images to logits; any
      tf_keras model, with or without noisy layers, maybe in pruning
      wrappers (train those with the `UpdatePruningStep` callback).
    eps: PGD's L-inf budget, in [0, 1] pixel units.
    step_size: PGD's step, at most `eps`.
    steps: PGD steps; 0 trains naturally.
    rand_init: PGD starts from a uniform random point in the eps-ball.
    adversarial: False trains naturally whatever `steps` is.
    clean_weight: weight of CE on clean images.
    adv_weight: weight of CE on adversarial images.
    attack_true_labels: attack the true labels instead of the model's own
      predictions (which avoid label leaking, as the method does).
    lambda_l1: lasso strength on the kernels.
    lambda_group: group lasso strength over output filters.
    weight_decay: L2 coefficient (coupled, as PyTorch's SGD: gradient
      weight_decay * w).
    validation_pgd_steps: `evaluate` (and `fit`'s validation) also runs
      PGD with this many steps on the true labels (random start, `eps`,
      `validation_step_size`) and reports `pgd_accuracy`: the check that
      catches catastrophic overfitting of a weak training attack. 0: clean
      only.
    validation_step_size: that PGD's step, at most `eps`.
    **kwargs: for `keras.Model` (e.g. name).

  Raises:
    ValueError: an argument out of range, or a backbone ending in a softmax.
  """

  def __init__(self, model, eps=8 / 255, step_size=2 / 255, steps=7,
               rand_init=True, adversarial=True, clean_weight=0.5,
               adv_weight=0.5, attack_true_labels=False, lambda_l1=5e-6,
               lambda_group=0.0, weight_decay=3e-4, validation_pgd_steps=0,
               validation_step_size=2 / 255, **kwargs):
    super().__init__(**kwargs)
    convert.require_logits(model, "RSRTrainer")
    _check_argument(0 <= eps <= 1, "eps", "in [0, 1] (pixel units)", eps)
    _check_argument(0 <= step_size <= eps, "step_size", f"in [0, eps={eps}]",
                    step_size)
    for name, value in (("steps", steps),
                        ("validation_pgd_steps", validation_pgd_steps)):
      _check_argument(isinstance(value, numbers.Integral) and value >= 0,
                      name, "an int >= 0", value)
    _check_argument(not validation_pgd_steps
                    or 0 < validation_step_size <= eps, "validation_step_size",
                    f"in (0, eps={eps}]", validation_step_size)
    for name, value in (("clean_weight", clean_weight),
                        ("adv_weight", adv_weight)):
      _check_argument(value >= 0, name, ">= 0", value)
    self.backbone = model
    # Python floats: CleverHans needs eps static inside tf.function.
    self.eps = float(eps)
    self.step_size = float(step_size)
    self.steps = int(steps)
    self.rand_init = bool(rand_init)
    self.adversarial = bool(adversarial) and self.steps > 0
    self.clean_weight = float(clean_weight)
    self.adv_weight = float(adv_weight)
    self.attack_true_labels = bool(attack_true_labels)
    self.validation_pgd_steps = int(validation_pgd_steps)
    self.validation_step_size = float(validation_step_size)
    _check_argument(not self.adversarial or clean_weight + adv_weight > 0,
                    "clean_weight + adv_weight", "> 0 to train adversarially",
                    clean_weight + adv_weight)
    self.kernel_penalty = regularizers.KernelPenalty(lambda_l1, lambda_group,
                                                     weight_decay)
    self.adversarial_active = self.adversarial
    # Attack passes use the unwrapped layers, which hold the same variables:
    # tfmot's wrapper would re-assign weights * mask on every PGD step, and
    # the clean pass of the same train step has already applied the mask.
    self._attack_fn = attacks.inference_fn(
        pruning.strip(model) if pruning.is_pruned(model) else model)
    self._kernels = list(pruning.kernels(model).values())
    self._alphas = rsr_layers.alphas(model)
    mean = keras.metrics.Mean
    self._trackers = {name: mean(name=name) for name in (
        "loss", "clean_loss", "adv_loss", "penalty", "clean_accuracy",
        "adv_accuracy", "l1_norm", "sparsity", "mean_alpha")}
    if self.validation_pgd_steps:  # evaluation only; train_step skips it
      self._trackers["pgd_accuracy"] = mean(name="pgd_accuracy")

  @property
  def metrics(self):
    return list(self._trackers.values())

  def call(self, inputs, training=False):
    return self.backbone(inputs, training=training)

  def training_calls_per_step(self):
    """How many `training=True` backbone calls one train step makes.

    tfmot advances its pruning step on each, so schedules count these.
    """
    return CALLS_PER_STEP[self.adversarial_active]

  def train_step(self, data):
    x, y = data
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    with tf.GradientTape() as tape:
      clean_logits = self.backbone(x, training=True)
      clean_loss = _cross_entropy(y, clean_logits)
      if self.adversarial_active:
        with tape.stop_recording():
          x_adv = self._adversarial_examples(x, y, clean_logits)
        adv_logits = self.backbone(x_adv, training=True)
        adv_loss = _cross_entropy(y, adv_logits)
        data_loss = (self.clean_weight * clean_loss
                     + self.adv_weight * adv_loss)
      else:
        data_loss = clean_loss
      penalty = self._penalty()
      loss = data_loss + penalty
      # One device differentiates `loss` itself, so its numbers stay exactly
      # those of a run without a strategy.
      objective = loss if replicas == 1 else _replica_objective(
          data_loss, penalty, y, replicas)
      scaled = objective
      if isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer):
        scaled = self.optimizer.get_scaled_loss(objective)  # float16 gradients
    variables = self.backbone.trainable_variables
    grads = tape.gradient(scaled, variables)
    if scaled is not objective:
      grads = self.optimizer.get_unscaled_gradients(grads)
    # Before the update: tfmot re-masks pruned weights on the next call, so
    # this reads the weights the forward passes actually used.
    self._update_weight_stats()
    # Under a strategy this sums the replicas' gradients (an all-reduce).
    self.optimizer.apply_gradients(zip(grads, variables))

    # Replicas may hold unequal parts of the last global batch; weighting
    # their mean losses by size makes the aggregated metric the global mean.
    weight = None if replicas == 1 else _batch_size(y)
    t = self._trackers
    t["loss"].update_state(loss, sample_weight=weight)
    t["clean_loss"].update_state(clean_loss, sample_weight=weight)
    t["penalty"].update_state(penalty)
    t["clean_accuracy"].update_state(_accuracy_count(y, clean_logits))
    if self.adversarial_active:
      t["adv_loss"].update_state(adv_loss, sample_weight=weight)
      t["adv_accuracy"].update_state(_accuracy_count(y, adv_logits))
    return {name: tracker.result() for name, tracker in t.items()
            if name != "pgd_accuracy"}

  def _adversarial_examples(self, x, y, clean_logits):
    # The model's own predictions avoid label leaking (Kurakin et al.), and
    # reusing the clean pass's logits saves a forward pass.
    labels = y if self.attack_true_labels else tf.argmax(clean_logits, -1)
    return attacks.pgd(self._attack_fn, x, labels, eps=self.eps,
                       step_size=self.step_size, steps=self.steps,
                       rand_init=self.rand_init)

  def _penalty(self):
    """The kernel penalty on every prunable kernel, plus the backbone's losses."""
    terms = []
    if self.kernel_penalty.active():
      for kernel in self._kernels:
        # The scope Keras gives a kernel_regularizer's ops. Grappler's
        # rewrites depend on op names, so this keeps the sums (and the
        # weights of a seeded run) bit for bit those of the penalty attached
        # as a regularizer, as rsr_tf did before RSRTrainer took lambdas.
        with tf.name_scope(kernel.name.split(":")[0] + "/Regularizer"):
          terms.append(self.kernel_penalty(kernel))
    terms += self.backbone.losses
    return tf.add_n(terms) if terms else tf.constant(0.0)

  def _update_weight_stats(self):
    if not self._kernels:
      return
    sizes = [tf.cast(tf.size(k), tf.float32) for k in self._kernels]
    self._trackers["l1_norm"].update_state(
        tf.add_n([tf.reduce_sum(tf.abs(k)) for k in self._kernels]))
    zeros = tf.add_n([tf.reduce_sum(tf.cast(tf.equal(k, 0), tf.float32))
                      for k in self._kernels])
    self._trackers["sparsity"].update_state(zeros / tf.add_n(sizes))
    if self._alphas:
      flat = tf.concat([tf.reshape(a, [-1]) for a in self._alphas], 0)
      self._trackers["mean_alpha"].update_state(tf.reduce_mean(flat))

  def test_step(self, data):
    x, y = data
    logits = self.backbone(x, training=False)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    self._trackers["clean_loss"].update_state(
        _cross_entropy(y, logits),
        sample_weight=None if replicas == 1 else _batch_size(y))
    self._trackers["clean_accuracy"].update_state(_accuracy_count(y, logits))
    names = ["clean_loss", "clean_accuracy"]
    if self.validation_pgd_steps:
      x_adv = attacks.pgd(self._attack_fn, x, y, eps=self.eps,
                          step_size=self.validation_step_size,
                          steps=self.validation_pgd_steps, rand_init=True)
      self._trackers["pgd_accuracy"].update_state(
          _accuracy_count(y, self.backbone(x_adv, training=False)))
      names.append("pgd_accuracy")
    return {name: self._trackers[name].result() for name in names}


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """A learning rate that is one function of the global epoch.

  Every variant of a budget follows the same curve over `total_epochs`; a
  pruned variant's fine-tuning optimizer starts at `first_epoch` (where it
  pruned) and carries on along it.

  Args:
    kind: "step" (times `gamma` at each of `milestone_epochs`, global epoch
      numbers) or "cosine" (from `learning_rate` to 0 over `total_epochs`).
    learning_rate: the rate at epoch 0.
    total_epochs: epochs of the whole run, both phases.
    steps_per_epoch: optimizer steps per epoch.
    first_epoch: the global epoch of this optimizer's step 0.
    milestone_epochs, gamma: the step schedule.
  """

  def __init__(self, kind, learning_rate, total_epochs, steps_per_epoch,
               first_epoch=0, milestone_epochs=(), gamma=0.1):
    super().__init__()
    if kind not in ("step", "cosine"):
      raise ValueError(f"kind must be step or cosine, got {kind!r}")
    self.kind = kind
    self.learning_rate = float(learning_rate)
    self.total_epochs = int(total_epochs)
    self.steps_per_epoch = int(steps_per_epoch)
    self.first_epoch = int(first_epoch)
    self.milestone_epochs = tuple(int(m) for m in milestone_epochs)
    self.gamma = float(gamma)

  def __call__(self, step):
    epoch = (tf.cast(self.first_epoch, tf.float32)
             + tf.cast(step, tf.float32) / self.steps_per_epoch)
    if self.kind == "step":
      # A milestone takes effect with the first step of its epoch.
      passed = tf.add_n([tf.cast(epoch >= m, tf.float32)
                         for m in self.milestone_epochs] or [tf.constant(0.0)])
      return self.learning_rate * tf.pow(self.gamma, passed)
    progress = tf.minimum(epoch / self.total_epochs, 1.0)
    return self.learning_rate * 0.5 * (1.0 + tf.cos(math.pi * progress))

  def get_config(self):
    return {"kind": self.kind, "learning_rate": self.learning_rate,
            "total_epochs": self.total_epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "first_epoch": self.first_epoch,
            "milestone_epochs": list(self.milestone_epochs), "gamma": self.gamma}


def step_decay(learning_rate, epochs, steps_per_epoch, milestones, gamma):
  """lr times gamma at each milestone, given as a fraction of `epochs`."""
  boundaries = [int(round(m * epochs)) * steps_per_epoch for m in milestones]
  values = [learning_rate * gamma ** i for i in range(len(boundaries) + 1)]
  return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def sgd(learning_rate, momentum):
  return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum,
                              nesterov=momentum > 0)


class AdversarialStart(keras.callbacks.Callback):
  """Turns adversarial training on from epoch `start_epoch` (0-based).

  The switch is a Python attribute of the trainer, so the train function is
  retraced once when it flips, and no step pays for a `tf.cond`. A trainer
  built with `adversarial=False` or `steps=0` stays natural.
  """

  def __init__(self, start_epoch):
    super().__init__()
    self.start_epoch = start_epoch

  @staticmethod
  def active_at(trainer, epoch, start_epoch):
    """Whether `trainer` makes adversarial examples in 0-based `epoch`."""
    return (trainer.adversarial and start_epoch is not None
            and epoch >= start_epoch)

  def on_epoch_begin(self, epoch, logs=None):
    wanted = self.active_at(self.model, epoch, self.start_epoch)
    if self.model.adversarial_active != wanted:
      self.model.adversarial_active = wanted
      self.model.make_train_function(force=True)


class Throughput(keras.callbacks.Callback):
  """Training images per second, per epoch, excluding validation time."""

  def __init__(self, images_per_epoch):
    super().__init__()
    self.images_per_epoch = images_per_epoch
    self.epoch_seconds = []
    self._start = None

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_test_begin(self, logs=None):
    if self._start is not None:
      self.epoch_seconds.append(time.perf_counter() - self._start)
      self._start = None

  def on_epoch_end(self, epoch, logs=None):
    if self._start is not None:  # no validation this epoch
      self.epoch_seconds.append(time.perf_counter() - self._start)
      self._start = None
    if logs is not None:
      logs["images_per_second"] = self.images_per_epoch / self.epoch_seconds[-1]

  def per_epoch(self):
    return [self.images_per_epoch / s for s in self.epoch_seconds]


class Checkpoint(keras.callbacks.Callback):
  """Keeps the latest backbone + optimizer state after every epoch.

  The model's variables include tfmot's masks and pruning step, so a
  restored run carries on with the same sparsity schedule.
  """

  def __init__(self, directory, backbone, optimizer, max_to_keep=2):
    super().__init__()
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    # Without an optimizer it only reads weights (another run's phase 1).
    self._read_only_weights = optimizer is None
    objects = {"model": backbone, "epoch": self.epoch}
    if optimizer is not None:
      objects["optimizer"] = optimizer
    self._checkpoint = tf.train.Checkpoint(**objects)
    self.manager = tf.train.CheckpointManager(self._checkpoint, directory,
                                              max_to_keep=max_to_keep)

  def restore(self, last_epoch=None):
    """Loads the latest checkpoint, if any; returns the epochs it completed.

    Args:
      last_epoch: the phase's last epoch. A checkpoint that already reached
        it takes no further step, so its optimizer slots are never read.
    """
    if not self.manager.latest_checkpoint:
      return 0
    # Optimizer slots do not exist until the first step; TF fills them then.
    status = self._checkpoint.restore(self.manager.latest_checkpoint)
    epochs = int(self.epoch.numpy())
    # Without a step the slots stay unread on purpose; saying so spares the
    # user TF's warning, one line per slot, when the object is deleted.
    if self._read_only_weights or (last_epoch is not None
                                   and epochs >= last_epoch):
      status.expect_partial()
    return epochs

  def on_epoch_end(self, epoch, logs=None):
    self.epoch.assign(epoch + 1)
    self.manager.save(checkpoint_number=epoch + 1)


class StopOnNaN(keras.callbacks.Callback):
  """Stops training at the first batch whose loss is not finite.

  Keras's TerminateOnNaN only says that the loss went bad; this names the
  term (clean, adversarial or penalty) so the user knows what to change.
  After `fit`, `message` is None or one line describing where it stopped.
  """

  TERMS = ("clean_loss", "adv_loss", "penalty")

  def __init__(self):
    super().__init__()
    self.message = None
    self._epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    loss = (logs or {}).get("loss")
    if loss is None or math.isfinite(float(loss)):
      return
    bad = [t for t in self.TERMS if t in logs and not math.isfinite(float(logs[t]))]
    self.message = (f"training stopped at epoch {self._epoch + 1}, batch "
                    f"{batch + 1}: the loss is {float(loss)} because "
                    f"{' and '.join(bad) or 'the total'} is not finite; lower "
                    "--lr or the regularisation strengths")
    self.model.stop_training = True
