"""PGD and FGSM stay inside the eps-ball and the pixel range, eager and traced."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import tiny_model
from rsr_tf import attacks
from rsr_tf import registry
from rsr_tf import square

EPS = 8 / 255


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("attack", ["pgd", "fgsm"])
def test_adversarial_examples_stay_within_eps_and_pixel_range(attack, graph):
  model = tiny_model()
  model_fn = attacks.inference_fn(model)
  x = tf.concat([tf.zeros((2, 8, 8, 3)), tf.ones((2, 8, 8, 3)),
                 tf.random.uniform((4, 8, 8, 3))], 0)
  y = tf.constant([0, 1, 2, 0, 1, 2, 0, 1])

  def make(x, y):
    if attack == "pgd":
      return attacks.pgd(model_fn, x, y, eps=EPS, step_size=2 / 255, steps=3)
    return attacks.fgsm(model_fn, x, y, eps=EPS)

  x_adv = (tf.function(make) if graph else make)(x, y).numpy()
  assert np.max(np.abs(x_adv - x.numpy())) <= EPS + 1e-6
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  assert np.max(np.abs(x_adv - x.numpy())) > EPS / 2, "the attack moved"


def test_eps_zero_returns_the_input_through_the_attack_itself():
  # The check "eps = 0 reproduces clean accuracy" only tests the attack if
  # eps = 0 runs it: a shortcut returning x would never call the model.
  model = tiny_model()
  calls = tf.Variable(0)  # counts in graph too: CleverHans traces model_fn

  def model_fn(images):
    calls.assign_add(1)
    return model(images, training=False)

  x = tf.random.uniform((2, 8, 8, 3))
  for norm in ("linf", "l2"):
    np.testing.assert_array_equal(
        attacks.pgd(model_fn, x, [0, 1], 0.0, 0.0, 3, norm=norm), x)
    np.testing.assert_array_equal(attacks.fgsm(model_fn, x, [0, 1], 0.0, norm=norm), x)
  np.testing.assert_array_equal(attacks.mim(model_fn, x, [0, 1], 0.0, 0.0, 2), x)
  np.testing.assert_array_equal(attacks.eot_pgd(model_fn, x, [0, 1], 0.0, 0.0, 2, 2), x)
  assert int(calls.numpy()) >= 2 * 3 + 2 + 2 + 2 * 2


def test_l2_pgd_stays_in_the_l2_ball_and_uses_it():
  model_fn = attacks.inference_fn(tiny_model())
  x = tf.random.uniform((6, 8, 8, 3), 0.2, 0.8)
  y = tf.constant([0, 1, 2, 0, 1, 2])
  x_adv = attacks.pgd(model_fn, x, y, eps=0.5, step_size=0.1, steps=5, norm="l2")
  distance = np.linalg.norm((x_adv - x).numpy().reshape(6, -1), axis=1)
  assert distance.max() <= 0.5 + 1e-5
  # An L2 ball of 0.5 over 192 pixels allows far less per pixel than L-inf 8/255
  # everywhere would (0.5 vs 8/255 * sqrt(192) = 0.43 ... per-pixel spread differs):
  # the step follows the gradient's direction, not its sign.
  assert distance.max() > 0.25 and np.abs((x_adv - x).numpy()).max() > 8 / 255
  with pytest.raises(ValueError, match="norm must be one of linf, l2"):
    attacks.pgd(model_fn, x, y, eps=0.5, step_size=0.1, steps=1, norm="l1")


def test_bad_static_arguments_are_named():
  model_fn = attacks.inference_fn(tiny_model())
  x = tf.random.uniform((1, 8, 8, 3))
  with pytest.raises(ValueError, match="eps must be a python float"):
    attacks.pgd(model_fn, x, [0], eps=tf.constant(0.1), step_size=0.01, steps=1)
  with pytest.raises(ValueError, match="step_size must be in"):
    attacks.pgd(model_fn, x, [0], eps=0.01, step_size=0.02, steps=1)
  with pytest.raises(ValueError, match="steps must be an int"):
    attacks.pgd(model_fn, x, [0], eps=0.01, step_size=0.01, steps=0)


def test_pixels_outside_unit_range_fail_in_graph():
  model_fn = attacks.inference_fn(tiny_model())
  run = tf.function(lambda x: attacks.fgsm(model_fn, x, [0], eps=0.01))
  with pytest.raises(tf.errors.InvalidArgumentError, match="above 1"):
    run(tf.fill((1, 8, 8, 3), 2.0))


def test_attack_calls_do_not_advance_the_pruning_step():
  import tensorflow_model_optimization as tfmot
  from rsr_tf import pruning
  model = pruning.prune(tiny_model(), tfmot.sparsity.keras.ConstantSparsity(0.5, 1))
  wrappers = [l for l in model.layers if hasattr(l, "pruning_step")]
  for w in wrappers:
    w.pruning_step.assign(0)
  attacks.pgd(attacks.inference_fn(model), tf.random.uniform((2, 8, 8, 3)),
              [0, 1], eps=EPS, step_size=EPS, steps=2)
  assert all(int(w.pruning_step) == 0 for w in wrappers)


def test_every_attack_implements_every_threat_model_of_the_registry():
  # One list of norm names (registry.NORMS); each implementation maps all of it.
  assert set(attacks.CLEVERHANS_ORD) == set(registry.NORMS)
  assert set(square._NORMS) == set(registry.NORMS)
  with pytest.raises(ValueError, match="norm must be one of linf, l2"):
    attacks._norm("l1")
