"""The RSR trainer: a `train_step` with PGD, weight noise, lasso and pruning."""

import math
import time

import rsr_tf  # noqa: F401
import tensorflow as tf
import tf_keras as keras

from rsr_tf import attacks
from rsr_tf import layers as rsr_layers
from rsr_tf import pruning


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


class RSRTrainer(keras.Model):
  """Wraps a functional backbone and trains it with the RSR objective.

  loss = clean_weight * CE(x) + adv_weight * CE(x_adv) + sum(backbone.losses),
  where x_adv is PGD made by the noisy backbone in inference mode, and
  `backbone.losses` holds the kernel penalties (lasso, group lasso, decay).
  Before adversarial training starts (`adversarial_active` False) the loss is
  CE(x) plus the penalties.

  Under a tf.distribute strategy (build the backbone, the optimizer and this
  trainer in its scope) each replica gets its part of the global batch, and
  the summed gradients equal one device's on the whole batch (see
  `_replica_objective`), except that a plain BatchNormalization normalises
  each replica's part by its own statistics. Logged metrics are aggregated
  over the replicas.

  Args:
    backbone: the model to train; may carry tfmot pruning wrappers.
    attack: `config.AttackConfig` for the PGD that makes x_adv.
    loss: `config.LossConfig` for the weights and label choice.
    adversarial_active: whether train steps make x_adv at all.
  """

  def __init__(self, backbone, attack, loss, adversarial_active=True, **kwargs):
    super().__init__(**kwargs)
    self.backbone = backbone
    self.attack = attack
    self.loss_config = loss
    self.adversarial_active = bool(adversarial_active)
    # Attack passes use the unwrapped layers, which hold the same variables:
    # tfmot's wrapper would re-assign weights * mask on every PGD step, and
    # the clean pass of the same train step has already applied the mask.
    self._attack_fn = attacks.inference_fn(
        pruning.strip(backbone) if pruning.is_pruned(backbone) else backbone)
    noisy = rsr_layers.noisy_layers(backbone)
    self._kernels = [layer.kernel for layer in noisy]
    self._alphas = [layer.alpha for layer in noisy if layer.alpha is not None]
    mean = keras.metrics.Mean
    self._trackers = {name: mean(name=name) for name in (
        "loss", "clean_loss", "adv_loss", "penalty", "clean_accuracy",
        "adv_accuracy", "l1_norm", "sparsity", "mean_alpha")}

  @property
  def metrics(self):
    return list(self._trackers.values())

  def call(self, inputs, training=False):
    return self.backbone(inputs, training=training)

  def training_calls_per_step(self):
    """How many `training=True` backbone calls one train step makes.

    tfmot advances its pruning step on each, so schedules count these.
    """
    return 2 if self.adversarial_active else 1

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
        data_loss = (self.loss_config.clean_weight * clean_loss
                     + self.loss_config.adv_weight * adv_loss)
      else:
        data_loss = clean_loss
      penalty = (tf.add_n(self.backbone.losses) if self.backbone.losses
                 else tf.constant(0.0))
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
    return {name: tracker.result() for name, tracker in t.items()}

  def _adversarial_examples(self, x, y, clean_logits):
    # The model's own predictions avoid label leaking (Kurakin et al.), and
    # reusing the clean pass's logits saves a forward pass.
    labels = y if self.loss_config.attack_true_labels else tf.argmax(
        clean_logits, -1)
    return attacks.pgd(self._attack_fn, x, labels, eps=self.attack.eps,
                       step_size=self.attack.step_size, steps=self.attack.steps,
                       rand_init=self.attack.rand_init)

  def _update_weight_stats(self):
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
    return {"clean_loss": self._trackers["clean_loss"].result(),
            "clean_accuracy": self._trackers["clean_accuracy"].result()}


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
  retraced once when it flips, and no step pays for a `tf.cond`.
  """

  def __init__(self, start_epoch):
    super().__init__()
    self.start_epoch = start_epoch

  def on_epoch_begin(self, epoch, logs=None):
    wanted = epoch >= self.start_epoch
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

  def restore(self):
    """Loads the latest checkpoint, if any; returns the epochs it completed."""
    if not self.manager.latest_checkpoint:
      return 0
    # Optimizer slots do not exist until the first step; TF fills them then.
    status = self._checkpoint.restore(self.manager.latest_checkpoint)
    if self._read_only_weights:
      status.expect_partial()
    return int(self.epoch.numpy())

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
