"""The RSR train_step: it learns, logs what it should, and honours its switches."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from helpers import colour_data, tiny_model
from rsr_tf import config as config_lib
from rsr_tf import layers as rsr_layers
from rsr_tf import regularizers
from rsr_tf import training


def _dataset(n=96, batch=32):
  images, labels = colour_data(n)
  return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


def _trainer(model, adversarial=True, **penalty):
  # The tests' models carry their penalty as a kernel_regularizer (the
  # user's own regularizer, which the trainer keeps), so none is added here
  # unless asked.
  penalty = {"lambda_l1": 0.0, "weight_decay": 0.0, **penalty}
  trainer = training.RSRTrainer(model, steps=3, adversarial=adversarial,
                                **penalty)
  trainer.compile(optimizer=training.sgd(0.05, 0.9))
  return trainer


def test_a_few_steps_reduce_the_loss():
  penalty = regularizers.KernelPenalty(lambda_l1=1e-4, weight_decay=3e-4)
  trainer = _trainer(tiny_model(kernel_regularizer=penalty))
  history = trainer.fit(_dataset(), epochs=8, verbose=0).history
  assert history["loss"][-1] < 0.8 * history["loss"][0]
  assert history["clean_accuracy"][-1] > 0.6
  assert history["penalty"][0] > 0


def test_logs_carry_the_rsr_quantities():
  trainer = _trainer(tiny_model(kernel_regularizer=regularizers.KernelPenalty(1e-4)))
  logs = trainer.fit(_dataset(), epochs=1, verbose=0).history
  for key in ("loss", "clean_loss", "adv_loss", "penalty", "clean_accuracy",
              "adv_accuracy", "l1_norm", "sparsity", "mean_alpha"):
    assert key in logs, key
  kernels = [l.kernel.numpy() for l in rsr_layers.noisy_layers(trainer.backbone)]
  assert logs["l1_norm"][0] == pytest.approx(
      sum(np.abs(k).sum() for k in kernels), rel=0.05)
  assert logs["mean_alpha"][0] == pytest.approx(0.25, abs=0.05)


def test_alpha_moves_and_is_not_penalised():
  model = tiny_model(kernel_regularizer=regularizers.KernelPenalty(1e-3, 1e-3, 1e-3))
  assert len(model.losses) == 3, "one penalty per kernel, none on alpha"
  trainer = _trainer(model)
  trainer.fit(_dataset(), epochs=2, verbose=0)
  alphas = np.concatenate([a.numpy().ravel() for a in rsr_layers.alphas(model)])
  assert not np.allclose(alphas, 0.25)


def test_clean_only_training_makes_no_adversarial_examples():
  trainer = _trainer(tiny_model(), adversarial=False)
  logs = trainer.fit(_dataset(), epochs=1, verbose=0).history
  assert logs["adv_loss"] == [0.0] and logs["adv_accuracy"] == [0.0]
  assert trainer.training_calls_per_step() == 1


def test_adversarial_start_callback_switches_on_at_its_epoch():
  trainer = _trainer(tiny_model())
  trainer.adversarial_active = False
  logs = trainer.fit(_dataset(), epochs=2, verbose=0,
                     callbacks=[training.AdversarialStart(1)]).history
  assert logs["adv_loss"][0] == 0.0 and logs["adv_loss"][1] > 0.0
  assert trainer.adversarial_active


def test_step_decay_schedule():
  schedule = training.step_decay(0.1, epochs=10, steps_per_epoch=5,
                                 milestones=(0.5, 0.75), gamma=0.1)
  assert float(schedule(0)) == pytest.approx(0.1)
  assert float(schedule(26)) == pytest.approx(0.01)
  assert float(schedule(41)) == pytest.approx(0.001)


def test_test_step_reports_clean_accuracy():
  trainer = _trainer(tiny_model())
  result = trainer.evaluate(_dataset(), verbose=0, return_dict=True)
  assert set(result) == {"clean_loss", "clean_accuracy"}


def test_validation_pgd_is_reported_by_evaluate_only():
  # A budget large enough to move colour_data's wide margins.
  trainer = training.RSRTrainer(tiny_model(), eps=0.5, steps=1,
                                validation_pgd_steps=5,
                                validation_step_size=0.1, lambda_l1=0.0,
                                weight_decay=0.0)
  trainer.compile(optimizer=training.sgd(0.05, 0.9))
  logs = trainer.fit(_dataset(), epochs=3, verbose=0).history
  assert "pgd_accuracy" not in logs
  result = trainer.evaluate(_dataset(), verbose=0, return_dict=True)
  assert set(result) == {"clean_loss", "clean_accuracy", "pgd_accuracy"}
  # Trained on this data: the attack must cost accuracy, or it did not run.
  assert result["pgd_accuracy"] < result["clean_accuracy"]
  with pytest.raises(ValueError, match="validation_step_size"):
    training.RSRTrainer(tiny_model(), validation_pgd_steps=7,
                        validation_step_size=9 / 255)


def test_catastrophic_overfitting_is_a_fall_from_the_best_epoch():
  from rsr_tf import experiment  # noqa: E402
  steady = {"val_pgd_accuracy": [0.2, 0.3, 0.25, 0.33, 0.31]}
  assert experiment.catastrophic_overfitting(steady) is None
  assert experiment.catastrophic_overfitting({}) is None
  collapsed = {"val_pgd_accuracy": [0.2, 0.35, float("nan"), 0.1, 0.02]}
  assert experiment.catastrophic_overfitting(collapsed) == {
      "epoch": 4, "best": 0.35, "fell_to": 0.1}


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_float32_alphas(policy):
  keras.mixed_precision.set_global_policy(policy)
  try:
    model = tiny_model(kernel_regularizer=regularizers.KernelPenalty(1e-4))
    trainer = _trainer(model)
    history = trainer.fit(_dataset(), epochs=6, verbose=0).history
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert all(a.dtype == tf.float32 for a in rsr_layers.alphas(model))
  assert np.all(np.isfinite(history["loss"]))
  assert history["loss"][-1] < history["loss"][0]
  if policy == "mixed_float16":
    assert isinstance(trainer.optimizer, keras.mixed_precision.LossScaleOptimizer)


def test_a_diverging_run_stops_and_names_the_bad_term():
  trainer = _trainer(tiny_model(kernel_regularizer=regularizers.KernelPenalty(1e-4)))
  trainer.optimizer.learning_rate.assign(1e12)
  stop = training.StopOnNaN()
  history = trainer.fit(_dataset(n=320), epochs=3, verbose=0, callbacks=[stop]).history
  assert stop.message is not None and "not finite" in stop.message
  assert any(term in stop.message for term in ("clean_loss", "adv_loss", "penalty"))
  assert len(history["loss"]) == 1, "stopped in the first epoch"


def _rates_by_epoch(lr_schedule, epochs, finetune_epochs, steps=5, **kw):
  """The learning rate in the middle of every global epoch, both phases.

  Mid-epoch: Keras's PiecewiseConstantDecay switches one step after its
  boundary, EpochSchedule on it.
  """
  from rsr_tf import recipe  # noqa: E402
  first, second = recipe.phase_learning_rates(
      lr_schedule, 0.1, epochs, finetune_epochs, steps, **kw)
  rate = lambda s, step: float(s(step)) if callable(s) else float(s)  # noqa: E731
  mid = steps // 2
  return ([rate(first, e * steps + mid) for e in range(epochs)]
          + [rate(second, e * steps + mid) for e in range(finetune_epochs)])


@pytest.mark.parametrize("kind,extra", [
    ("step", {"lr_milestone_epochs": (5, 8)}), ("cosine", {})])
def test_a_pruned_variant_follows_the_dense_runs_learning_rates(kind, extra):
  dense = _rates_by_epoch(kind, 10, 0, **extra)
  pruned = _rates_by_epoch(kind, 7, 3, **extra)  # prunes at epoch 7
  np.testing.assert_allclose(pruned, dense, rtol=1e-6)
  if kind == "step":
    np.testing.assert_allclose(dense, [0.1] * 5 + [0.01] * 3 + [0.001] * 2,
                               rtol=1e-6)
  else:
    assert dense[0] == pytest.approx(0.1, rel=0.01) and dense[-1] < dense[0] / 10


def test_the_per_phase_schedule_is_unchanged_and_differs_between_variants():
  """What the cpu flagfiles keep: fractions of each run's own phase 1."""
  dense = _rates_by_epoch("per_phase", 6, 0)
  pruned = _rates_by_epoch("per_phase", 5, 1)
  np.testing.assert_allclose(dense, [0.1] * 3 + [0.01] + [0.001] * 2, rtol=1e-6)
  np.testing.assert_allclose(pruned, [0.1] * 2 + [0.01] * 2 + [0.001, 0.01],
                             rtol=1e-6)


def test_every_cpu_flagfile_keeps_the_per_phase_schedule():
  import glob  # noqa: E402
  import os  # noqa: E402
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  files = glob.glob(os.path.join(root, "configs", "cpu", "*.flags"))
  assert files
  for path in files:
    with open(path) as f:
      assert "--lr_schedule" not in f.read(), path


def test_a_resume_or_init_from_on_other_data_is_refused(tmp_path):
  import dataclasses  # noqa: E402
  from rsr_tf import data as data_lib  # noqa: E402
  from rsr_tf import experiment  # noqa: E402

  def dataset(labels):
    images, _ = colour_data(len(labels))
    split = data_lib.Split((np.asarray(images) * 255).astype(np.uint8),
                           np.asarray(labels, np.int64))
    return data_lib.Dataset(split, split, ("a", "b"), "test")

  same, other = dataset([0, 1, 0, 1]), dataset([1, 0, 0, 1])
  first = config_lib.TrainConfig(output_dir=str(tmp_path / "run"))
  for folder in ("run", "sweep"):  # run() has made the output folder by then
    (tmp_path / folder).mkdir()
  experiment._check_same_data(first, same)  # fresh: writes the fingerprint
  fingerprint = tmp_path / "run" / experiment.DATA_FINGERPRINT
  assert fingerprint.is_file()
  experiment._check_same_data(first, other)  # no checkpoints yet: a new run
  experiment._check_same_data(first, same)
  (tmp_path / "run" / "checkpoints").mkdir()
  experiment._check_same_data(first, same)  # the same data resumes
  with pytest.raises(experiment.RunError,
                     match=r"holds checkpoints trained on other data .*labels_sha256"):
    experiment._check_same_data(first, other)
  sweep = dataclasses.replace(first, output_dir=str(tmp_path / "sweep"),
                              init_from=str(tmp_path / "run"))
  with pytest.raises(experiment.RunError, match=r"\(--init_from\) was trained on"):
    experiment._check_same_data(sweep, other)
  experiment._check_same_data(sweep, same)
  fingerprint.unlink()  # a run saved before fingerprints: trusted
  experiment._check_same_data(first, other)


def test_restoring_a_finished_phase_leaves_no_unrestored_slot_warnings(tmp_path):
  """A resume after a phase's last epoch takes no step, so the optimizer's
  slots are never filled; that must not flood the log when it is deleted."""
  import gc
  import logging

  def checkpoint():
    model = tiny_model()
    trainer = _trainer(model, adversarial=False)
    return trainer, training.Checkpoint(str(tmp_path), model, trainer.optimizer)

  trainer, saver = checkpoint()
  trainer.fit(_dataset(), epochs=1, verbose=0)  # creates the momentum slots
  saver.on_epoch_end(0)
  del trainer, saver

  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger = logging.getLogger("tensorflow")
  logger.addHandler(handler)
  try:
    for last_epoch, warned in ((1, False), (2, True)):
      records.clear()
      trainer, restorer = checkpoint()
      assert restorer.restore(last_epoch=last_epoch) == 1
      del trainer, restorer
      gc.collect()
      unrestored = [r for r in records if "unrestored values" in r.getMessage()]
      # The unfinished case is the control: TF does warn, had a step not run.
      assert bool(unrestored) == warned, [r.getMessage() for r in records]
  finally:
    logger.removeHandler(handler)
