"""The method itself: PNI-W's gradient, the 0.5/0.5 loss, the attack's labels, EOT."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from helpers import colour_data
from rsr_tf import attacks
from rsr_tf import layers as rsr_layers
from rsr_tf import training


# --- 1. d w_noisy / d alpha = eta, and d w_noisy / d w = 1 -------------------

def _one_hot_images(h, w, c):
  """Every unit image of shape [h, w, c]: a valid conv over them reads out its kernel."""
  return tf.reshape(tf.eye(h * w * c), (h * w * c, h, w, c))


# Each layer with the alpha shape the method asks for ("channel": one alpha per
# output channel), and how to read its effective (noisy) kernel out of one call.
def _dense():
  layer = rsr_layers.NoisyDense(8, use_bias=False)
  layer.build((None, 64))
  return layer, (8,), lambda: layer(tf.eye(64))


def _conv():
  layer = rsr_layers.NoisyConv2D(8, 3, use_bias=False)
  layer.build((None, 3, 3, 6))
  return layer, (8,), lambda: tf.reshape(
      layer(_one_hot_images(3, 3, 6)), (3, 3, 6, 8))


def _depthwise():
  layer = rsr_layers.NoisyDepthwiseConv2D(5, depth_multiplier=2, use_bias=False)
  layer.build((None, 5, 5, 3))

  def read():
    # Output channel c * 2 + m of the unit image at (i, j, c') is K[i, j, c, m]
    # when c == c', else 0: keep the diagonal.
    out = tf.reshape(layer(_one_hot_images(5, 5, 3)), (5, 5, 3, 3, 2))
    return tf.reduce_sum(out * tf.eye(3)[None, None, :, :, None], axis=3)

  return layer, (3, 2), read


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("make", [_dense, _conv, _depthwise],
                         ids=["dense", "conv", "depthwise"])
def test_noisy_kernel_gradient_wrt_alpha_is_the_drawn_eta(make, graph):
  # Catches: alpha broadcast on the wrong axis, sigma taken per channel instead
  # of over the whole tensor, a gradient to w through sigma or eta (no
  # stop-gradient), multiplicative noise w * (1 + alpha * eta), an alpha cut
  # off from the loss, and a call() that skips the noise.
  layer, alpha_shape, read_kernel = make()
  assert tuple(layer.alpha.shape) == alpha_shape
  rng = np.random.default_rng(0)
  kernel_shape = tuple(layer.noisy_weight.shape)
  channels = int(np.prod(alpha_shape))
  # Channels of very different scales, so a per-channel sigma is visible.
  scales = np.geomspace(0.1, 1.0, channels).reshape(alpha_shape)
  layer.noisy_weight.assign(
      (rng.normal(0, 1, kernel_shape) * scales).astype(np.float32))
  layer.alpha.assign(np.linspace(0.1, 0.8, channels).reshape(alpha_shape)
                     .astype(np.float32))
  upstream = tf.constant(rng.normal(0, 1, kernel_shape).astype(np.float32))

  def step():
    with tf.GradientTape() as tape:
      noisy = read_kernel()
      loss = tf.reduce_sum(upstream * noisy)
    g_alpha, g_w = tape.gradient(loss, [layer.alpha, layer.noisy_weight])
    return noisy, g_alpha, g_w

  noisy, g_alpha, g_w = [t.numpy() for t in (tf.function(step) if graph else step)()]
  w, alpha = layer.noisy_weight.numpy(), layer.alpha.numpy()
  eta = (noisy - w) / alpha  # alpha broadcasts over the trailing channel axes
  other_axes = tuple(range(len(kernel_shape) - len(alpha_shape)))
  np.testing.assert_allclose(g_alpha, (upstream.numpy() * eta).sum(other_axes),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(g_w, upstream.numpy(), rtol=1e-6, atol=1e-6)
  # eta ~ N(0, std(w)^2) with one sigma for the whole tensor, in every channel.
  per_channel = eta.reshape(-1, channels).std(axis=0) / w.std()
  assert np.all((per_channel > 0.6) & (per_channel < 1.5)), per_channel
  # A fresh draw on every call.
  assert not np.allclose(read_kernel().numpy(), noisy)


# --- 2. loss = 0.5 * CE(x) + 0.5 * CE(x_adv) + penalty -----------------------

def _linear_model(seed=0):
  keras.utils.set_random_seed(seed)
  return keras.Sequential([
      keras.Input((8, 8, 3)), keras.layers.Flatten(),
      keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.05))])


def _ce(model, x, y):
  return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=y, logits=model(x, training=True)))


PGD = {"eps": 0.1, "step_size": 0.05, "steps": 3}


@pytest.mark.parametrize("weights", [{}, {"clean_weight": 1.0, "adv_weight": 0.0}],
                         ids=["default", "clean_only"])
def test_one_step_follows_the_weighted_clean_and_adversarial_loss(weights):
  # Catches: the two CE terms summed (1/1) or averaged differently, weights
  # hard-coded instead of read from the arguments, the adversarial CE taken on
  # x or against the attack's labels, and a logged loss that is not the one
  # differentiated. Deterministic: no noise, no random start, plain SGD.
  clean_weight = weights.get("clean_weight", 0.5)
  adv_weight = weights.get("adv_weight", 0.5)
  model = _linear_model()
  x, y = colour_data(32)
  trainer = training.RSRTrainer(model, rand_init=False, lambda_l1=0.0,
                                weight_decay=0.0, **PGD, **weights)
  lr = 0.5
  trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=0.0))

  # By hand, before the step: x_adv from the model's own predictions.
  before = [v.numpy() for v in model.trainable_variables]
  labels = tf.argmax(model(x, training=False), -1)
  x_adv = attacks.pgd(attacks.inference_fn(model), x, labels, rand_init=False,
                      **PGD)

  def update(wc, wa):
    with tf.GradientTape() as tape:
      clean, adv = _ce(model, x, y), _ce(model, x_adv, y)
      penalty = tf.add_n(model.losses)
      loss = wc * clean + wa * adv + penalty
    grads = tape.gradient(loss, model.trainable_variables)
    return [-lr * g.numpy() for g in grads], [float(t) for t in (
        loss, clean, adv, penalty)]

  expected, (loss, clean, adv, penalty) = update(clean_weight, adv_weight)
  summed, _ = update(1.0, 1.0)  # the most plausible wrong weighting
  assert max(np.abs(e - s).max() for e, s in zip(expected, summed)) > 1e-2

  logs = trainer.train_on_batch(x, y, return_dict=True)
  assert penalty > 0.01
  assert logs["penalty"] == pytest.approx(penalty, rel=1e-5)
  assert logs["clean_loss"] == pytest.approx(clean, rel=1e-5)
  assert logs["adv_loss"] == pytest.approx(adv, rel=1e-5)
  assert logs["loss"] == pytest.approx(
      clean_weight * logs["clean_loss"] + adv_weight * logs["adv_loss"]
      + logs["penalty"], rel=1e-5)
  assert logs["loss"] == pytest.approx(loss, rel=1e-5)
  for b, e, v in zip(before, expected, model.trainable_variables):
    np.testing.assert_allclose(v.numpy() - b, e, rtol=1e-4, atol=1e-6)


# --- 3. training PGD attacks the model's own predictions ---------------------

def _mispredicting_model():
  """Predicts colour_data's class right for classes 0 and 1, and 0 for class 2."""
  model = keras.Sequential([keras.Input((8, 8, 3)),
                            keras.layers.GlobalAveragePooling2D(),
                            keras.layers.Dense(3, use_bias=False)])
  # Channel means are ~0.7 for the image's class and ~0.2 otherwise; channel 2
  # votes for class 0 more than for its own class.
  model.layers[-1].kernel.assign(
      10 * np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0.5]], np.float32))
  return model


@pytest.mark.parametrize("attack_true_labels", [False, True])
def test_training_attack_uses_own_predictions_unless_told(attack_true_labels):
  # Catches: the trainer attacking the true labels by default (label leaking),
  # or ignoring attack_true_labels. Read from the logged adversarial CE, which
  # differs between the two label choices on the mispredicted images.
  model = _mispredicting_model()
  x, y = colour_data(48)
  predicted = tf.argmax(model(x), -1).numpy()
  assert np.any(predicted != y) and np.any(predicted == y)

  def adv_loss(labels):
    x_adv = attacks.pgd(attacks.inference_fn(model), x, labels,
                        rand_init=False, **PGD)
    return float(_ce(model, x_adv, y))

  own, true = adv_loss(predicted), adv_loss(y)
  assert abs(own - true) > 0.1 * max(own, true)
  trainer = training.RSRTrainer(model, rand_init=False, lambda_l1=0.0,
                                weight_decay=0.0,
                                attack_true_labels=attack_true_labels, **PGD)
  trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))
  logs = trainer.train_on_batch(x, y, return_dict=True)
  assert logs["adv_loss"] == pytest.approx(true if attack_true_labels else own,
                                           rel=1e-4)


# --- 4. EOT follows the expected gradient ------------------------------------

# Per call and per image a factor s: -1 with probability 0.6, +3 with 0.4, so
# E[s] = 0.6 > 0 while one draw points the wrong way 60% of the time.
S_LOW, S_HIGH, P_HIGH = -1.0, 3.0, 0.4
MEAN_S = (1 - P_HIGH) * S_LOW + P_HIGH * S_HIGH
BIAS, SLOPE = -0.2, 2.0


def _stochastic_logits(x):
  """Two classes; logit of class 1 is BIAS + s * SLOPE * (mean(x) - 0.5)."""
  shift = tf.reduce_mean(x, axis=[1, 2, 3]) - 0.5
  s = tf.where(tf.random.uniform(tf.shape(shift)) < P_HIGH, S_HIGH, S_LOW)
  return tf.stack([tf.zeros_like(shift), BIAS + s * SLOPE * shift], axis=-1)


def _fooled_in_expectation(x_adv):
  # The mean logit is BIAS + E[s] * SLOPE * shift: exact, no sampling.
  shift = x_adv.numpy().mean(axis=(1, 2, 3)) - 0.5
  return BIAS + MEAN_S * SLOPE * shift > 0


def test_eot_pgd_averages_the_gradient_over_draws():
  # Catches: an eot_pgd that reuses one draw for all its samples, or that
  # takes a majority vote of per-draw gradient signs: either follows the
  # single draw's (wrong) direction, as plain PGD does, and fails.
  x = tf.fill((64, 2, 2, 1), 0.5)
  y = tf.zeros(64, tf.int64)
  assert not np.any(_fooled_in_expectation(x))
  attack = {"eps": 0.2, "step_size": 0.05, "steps": 10, "rand_init": False}
  plain = attacks.pgd(_stochastic_logits, x, y, **attack)
  eot = attacks.eot_pgd(_stochastic_logits, x, y, eot_samples=64, **attack)
  # Only a shift of the full eps fools the mean logit.
  assert np.mean(_fooled_in_expectation(plain)) < 0.3
  assert np.mean(_fooled_in_expectation(eot)) > 0.9
