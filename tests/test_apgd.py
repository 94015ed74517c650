"""APGD: analytic optima, feasibility, EOT, its returned point, no retracing."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from rsr_tf import apgd as apgd_lib
from rsr_tf import perturbation


def _linear_model(weights, bias):
  """A tf_keras Dense on flattened 4x4x1 images, as an inference callable."""
  model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(weights.shape[1])])
  model.layers[-1].set_weights([weights, bias])
  return lambda x: model(x, training=False)


def _predictions(model_fn, x):
  return np.argmax(np.asarray(model_fn(tf.constant(x))), axis=1)


def _random_linear_model(num_classes=4, seed=0):
  rng = np.random.default_rng(seed)
  return _linear_model(rng.normal(size=(16, num_classes)).astype(np.float32),
                       np.zeros(num_classes, np.float32))


def _images(n, seed):
  return np.random.default_rng(seed).uniform(
      size=(n, 4, 4, 1)).astype(np.float32)


def _conv_model(num_classes=4):
  inputs = keras.Input((6, 6, 3))
  hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
  hidden = keras.layers.GlobalAveragePooling2D()(hidden)
  model = keras.Model(inputs, keras.layers.Dense(num_classes)(hidden))
  return lambda x: model(x, training=False)


class _CountingModel:
  """Wraps a model_fn and counts its calls in-graph (every execution counts)."""

  def __init__(self, model_fn):
    self.model_fn = model_fn
    self.calls = tf.Variable(0, dtype=tf.int64, trainable=False)

  def __call__(self, x):
    self.calls.assign_add(1)
    return self.model_fn(x)


@pytest.mark.parametrize("norm, eps", [("linf", 0.02), ("l2", 0.06)])
def test_apgd_reaches_the_analytic_worst_point_of_a_linear_model(norm, eps):
  # With two classes the CE only grows as the margin z_y - z_other falls, and
  # that margin is linear: inside the ball it is lowest at x - eps sign(a)
  # (L-inf) or x - eps a / |a| (L2), a = w_y - w_other. Pixels in [0.3, 0.7]
  # keep the [0, 1] box out of the way, so those points are the optima and
  # the robust accuracy is the share of examples whose worst margin stays > 0.
  rng = np.random.default_rng(0)
  weights = rng.normal(size=(16, 2)).astype(np.float32)
  x = rng.uniform(0.3, 0.7, size=(64, 4, 4, 1)).astype(np.float32)
  flat = x.reshape(64, -1)
  bias = np.array([-np.median(flat @ (weights[:, 0] - weights[:, 1])), 0],
                  np.float32)
  model_fn = _linear_model(weights, bias)
  y = _predictions(model_fn, x)  # clean accuracy 100%
  a = np.where(y[:, None] == 0, 1.0, -1.0) * (weights[:, 0] - weights[:, 1])
  if norm == "linf":
    worst = flat - eps * np.sign(a)
  else:
    worst = flat - eps * a / np.linalg.norm(a, axis=1, keepdims=True)
  worst_margin = np.sum(a * worst, axis=1) + np.where(y == 0, 1, -1) * bias[0]
  keep = np.abs(worst_margin) > 0.05  # no example on the fence
  x, y, worst, worst_margin = x[keep], y[keep], worst[keep], worst_margin[keep]
  robust = np.mean(worst_margin > 0)
  assert 0.2 < robust < 0.8, "some examples must fall and some survive"

  x_adv = apgd_lib.apgd(model_fn, x, y, eps, norm=norm, steps=20,
                        batch_size=32)

  # Flipped examples get their most adversarial point, survivors their
  # highest-loss one: here both are the worst point.
  np.testing.assert_allclose(x_adv.reshape(len(x), -1), worst,
                             atol=1e-5 if norm == "linf" else 2e-3)
  assert np.mean(_predictions(model_fn, x_adv) == y) == robust


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_results_stay_in_the_ball_and_in_the_pixel_range(norm, eps):
  model_fn = _conv_model()
  x = np.random.default_rng(1).uniform(size=(6, 6, 6, 3)).astype(np.float32)
  x[0], x[1] = 0.0, 1.0  # the box binds on every pixel here
  y = np.array([0, 1, 2, 3, 0, 1])
  for x_adv in (
      apgd_lib.apgd(model_fn, x, y, eps, norm=norm, loss="dlr", steps=5,
                    restarts=2, batch_size=4),
      apgd_lib.apgd_targeted(model_fn, x, y, eps, norm=norm, steps=5,
                             targets=2, batch_size=4)):
    delta = (x_adv - x).reshape(len(x), -1)
    size = (np.abs(delta).max(axis=1) if norm == "linf"
            else np.linalg.norm(delta, axis=1))
    assert size.max() <= eps * (1 + 1e-5)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.median(size) > eps / 2, "the attack moved"


def test_l2_projection_is_the_closest_feasible_point():
  rng = np.random.default_rng(2)
  x = tf.constant(rng.uniform(0.8, 1.0, size=(16, 2, 2, 1)), tf.float32)
  z = x + tf.constant(rng.normal(0.3, 0.5, size=(16, 2, 2, 1)), tf.float32)
  eps = 0.4
  projected = perturbation.project_l2(z, x, eps)
  assert np.all(np.asarray(perturbation.l2_norm(projected - x)) <= eps + 1e-6)
  assert np.all((np.asarray(projected) >= 0) & (np.asarray(projected) <= 1))
  # Closer to z than scaling into the ball and then clipping (AutoAttack's
  # way), and strictly closer where the box binds.
  delta = z - x
  scale = tf.minimum(1.0, eps / perturbation.l2_norm(delta))
  scaled = tf.clip_by_value(x + perturbation.per_example(scale) * delta, 0, 1)
  ours = np.asarray(perturbation.l2_norm(projected - z))
  theirs = np.asarray(perturbation.l2_norm(scaled - z))
  assert np.all(ours <= theirs + 1e-6)
  assert np.any(ours < theirs - 1e-3)
  # And no random feasible point is closer.
  for _ in range(20):
    other = perturbation.project_l2(
        x + tf.random.normal(x.shape, stddev=0.3), x, eps)
    assert np.all(ours <= np.asarray(perturbation.l2_norm(other - z)) + 1e-6)


def _two_basin_model():
  """4 classes; CE's gradient always leads to a corner that does not fool.

  From x = 0.5, raising every pixel lifts class 1 (the runner-up) but never
  past class 0; lowering them all lifts class 2 past class 0, yet the CE
  gradient points up wherever the attack can start. Class 3 is far below.
  """
  weights = np.zeros((16, 4), np.float32)
  weights[:, 1], weights[:, 2] = 1.0, -10.0
  bias = np.array([0.0, -9.3, 73.0, -20.0], np.float32)
  return _linear_model(weights, bias)


def test_targeted_apgd_fools_what_untargeted_ce_misses():
  model_fn = _two_basin_model()
  x = np.full((4, 4, 4, 1), 0.5, np.float32)
  y = np.zeros(4, np.int64)
  eps = 0.05
  assert np.all(_predictions(model_fn, apgd_lib.apgd(
      model_fn, x, y, eps, steps=10)) == 0)
  # The first target is the runner-up, class 1, which no point reaches...
  assert np.all(_predictions(model_fn, apgd_lib.apgd_targeted(
      model_fn, x, y, eps, steps=10, targets=1)) == 0)
  # ...the second is class 2. Asking for 9 targets of 4 classes runs 3.
  x_adv = apgd_lib.apgd_targeted(model_fn, x, y, eps, steps=10, targets=9)
  assert np.all(_predictions(model_fn, x_adv) == 2)
  np.testing.assert_allclose(x_adv, x - eps, atol=1e-6)


def _bowl_model(centre):
  """Two classes; the margin -10 |x - centre|^2 - 1 peaks inside the ball."""
  def model_fn(x):
    flat = tf.reshape(x, [tf.shape(x)[0], -1])
    margin = -10.0 * tf.reduce_sum(tf.square(flat - centre), axis=1) - 1.0
    return tf.stack([tf.zeros_like(margin), margin], axis=1)
  return model_fn


def test_the_step_size_halves_where_the_loss_oscillates():
  # Sign steps of a fixed 2 eps jump across an interior maximum forever;
  # only the halving at the reviews lets APGD close in on it. Nothing fools
  # (the margin stays <= -1), so the highest-loss point comes back.
  centre = 0.5371
  x = np.full((4, 4, 4, 1), 0.5, np.float32)
  x_adv = apgd_lib.apgd(_bowl_model(centre), x, np.zeros(4, np.int64), 0.1,
                        steps=20)
  assert np.abs(x_adv - centre).max() < 0.01


def test_targets_are_the_top_non_true_classes_of_the_clean_logits():
  logits = np.array([[5.0, 1.0, 3.0, 2.0], [0.0, 4.0, 1.0, 2.0]])
  ranked = apgd_lib._target_classes(logits, np.array([0, 3]), 9)
  np.testing.assert_array_equal(ranked, [[2, 3, 1], [1, 2, 0]])
  np.testing.assert_array_equal(
      apgd_lib._target_classes(logits, np.array([0, 3]), 1), [[2], [1]])


def test_the_returned_point_is_the_most_adversarial_fooling_iterate():
  # Two examples, three iterates each, tagged by their pixel value. Example 0
  # is fooled by all three: the largest margin (iterate 1) must win, not the
  # highest loss (iterate 2) nor the last fooling one. Example 1 is never
  # fooled: the highest loss (iterate 2) wins, not the largest margin.
  margins = [[0.5, -1.0], [2.0, -0.5], [1.0, -2.0]]
  losses = [[3.0, 2.0], [1.0, 1.0], [5.0, 4.0]]
  found = None
  for tag, (margin, loss) in enumerate(zip(margins, losses)):
    images = tf.fill([2, 2, 2, 1], float(tag))
    step = apgd_lib._Found(images, tf.constant(margin), images,
                           tf.constant(loss))
    found = step if found is None else apgd_lib._keep_better(found, step)
  point = apgd_lib._returned_point(found)
  assert point.shape == (2, 2, 2, 1)
  np.testing.assert_array_equal(point[:, 0, 0, 0], [1.0, 2.0])


def _sign_noise_model(bias):
  """Two classes; the margin's weights are 1 + 2 r per pixel, r = +-1 fresh
  on every call. The mean margin is sum(x) + bias, so the expected gradient
  says "raise every pixel", while one draw gets half the pixels wrong."""
  def model_fn(x):
    flat = tf.reshape(x, [tf.shape(x)[0], -1])
    r = tf.sign(tf.random.uniform(tf.shape(flat)) - 0.5)
    margin = tf.reduce_sum(flat * (1.0 + 2.0 * r), axis=1) + bias
    return tf.stack([tf.zeros_like(margin), margin], axis=1)
  return model_fn


def test_eot_averages_the_noise_draws_of_separate_calls():
  x = np.full((8, 4, 4, 1), 0.5, np.float32)
  y = np.zeros(8, np.int64)
  eps = 0.1
  # The mean margin is -0.8 at x and +0.8 at the corner x + eps.
  model_fn = _sign_noise_model(bias=-8.8)
  averaged = apgd_lib.apgd(model_fn, x, y, eps, steps=10, eot_samples=64)
  np.testing.assert_allclose(averaged, x + eps, atol=1e-6)
  # One draw per step wanders: the planted case is one EOT must solve.
  single = apgd_lib.apgd(model_fn, x, y, eps, steps=10, eot_samples=1)
  at_corner = np.all(np.abs(single - (x + eps)) < 1e-6, axis=(1, 2, 3))
  assert at_corner.mean() < 0.5


def test_eot_draws_are_separate_model_calls():
  model_fn = _CountingModel(_random_linear_model())
  apgd_lib.apgd(model_fn, _images(3, 3), [0, 1, 2], 8 / 255, steps=4,
                eot_samples=3,
                restarts=2, batch_size=2)
  # One probe for the class count, then per batch (2) and restart (2) the
  # start and 4 steps, each of 3 calls.
  assert int(model_fn.calls.numpy()) == 1 + 2 * 2 * (4 + 1) * 3


def test_eps_zero_returns_the_input_through_the_attack():
  model_fn = _CountingModel(_random_linear_model())
  x = _images(3, 4)
  y = _predictions(model_fn.model_fn, x)  # so that nothing is fooled
  for norm in apgd_lib.NORMS:
    np.testing.assert_array_equal(
        apgd_lib.apgd(model_fn, x, y, 0.0, norm=norm, steps=3), x)
  assert int(model_fn.calls.numpy()) == 2 * (1 + 4)
  # Nothing fools at eps = 0, so all min(9, 4 - 1) = 3 targets run: one
  # clean pass, then 3 runs of a start and 3 steps.
  model_fn.calls.assign(0)
  np.testing.assert_array_equal(
      apgd_lib.apgd_targeted(model_fn, x, y, 0.0, steps=3, targets=9), x)
  assert int(model_fn.calls.numpy()) == 1 + 3 * (1 + 3)


def test_eps_zero_output_comes_from_the_projection(monkeypatch):
  # A broken projection must show at eps = 0: no shortcut returns x.
  def broken(z, x, eps):
    return tf.clip_by_value(z + 0.01, 0.0, 1.0)
  monkeypatch.setitem(perturbation.PROJECTIONS, "linf", broken)
  model_fn = _random_linear_model()  # a new callable, compiled with `broken`
  x = np.full((2, 4, 4, 1), 0.5, np.float32)
  assert not np.array_equal(apgd_lib.apgd(model_fn, x, [0, 1], 0.0, steps=2), x)


def test_a_partial_last_batch_and_a_new_eps_do_not_retrace():
  model_fn = _random_linear_model()
  x = _images(5, 5)
  y = np.array([0, 1, 2, 3, 0])
  out = apgd_lib.apgd(model_fn, x, y, 8 / 255, steps=2, batch_size=2)
  out_again = apgd_lib.apgd(model_fn, x[:3], y[:3], 4 / 255, steps=2,
                            batch_size=2, seed=1)
  assert out.shape == x.shape and out_again.shape == (3, 4, 4, 1)
  attack = apgd_lib._compiled_attack(model_fn, "linf", "ce", 2, 1)
  assert attack.experimental_get_tracing_count() == 1


def test_checkpoints_follow_the_reference_schedule():
  # 100 steps: windows of 22, then 3 fewer per review, down to 6.
  assert apgd_lib.apgd_checkpoints(100) == [
      (22, 22), (41, 19), (57, 16), (70, 13), (80, 10), (87, 7), (93, 6),
      (99, 6)]
  assert apgd_lib.apgd_checkpoints(20)[:3] == [(4, 4), (7, 3), (9, 2)]
  assert apgd_lib.apgd_checkpoints(1) == [(1, 1)]
  windows = apgd_lib._review_windows(100)
  assert windows[21] == 22.0 and windows[40] == 19.0 and sum(
      w > 0 for w in windows) == 8


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": 8}, "eps must be a finite python float >= 0"),
    ({"eps": -0.1}, "eps must be"),
    ({"eps": float("nan")}, "eps must be"),
    ({"norm": "L2"}, "norm must be one of linf, l2"),
    ({"loss": "cw"}, "loss must be one of ce, dlr"),
    ({"steps": 0}, "steps must be an int >= 1"),
    ({"steps": 2.0}, "steps must be an int >= 1"),
    ({"eot_samples": 0}, "eot_samples must be an int >= 1"),
    ({"restarts": True}, "restarts must be an int >= 1"),
    ({"batch_size": 0}, "batch_size must be an int >= 1"),
    ({"x": np.full((1, 4, 4, 1), 1.5, np.float32)}, r"images in \[0, 1\]"),
    ({"x": np.zeros((4, 4, 1), np.float32)}, r"\[N, H, W, C\]"),
    ({"y": [0, 1]}, "y must be 1 int labels"),
    ({"y": [7]}, "class indices < 2"),
    ({"loss": "dlr"}, "at least 3 classes, got 2"),
])
def test_bad_arguments_are_named(kwargs, message):
  model_fn = _linear_model(np.zeros((16, 2), np.float32),
                           np.zeros(2, np.float32))
  arguments = {"x": np.zeros((1, 4, 4, 1), np.float32), "y": [0], "eps": 0.1,
               **kwargs}
  with pytest.raises(ValueError, match=message):
    apgd_lib.apgd(model_fn, arguments.pop("x"), arguments.pop("y"),
                  arguments.pop("eps"), **arguments)


def test_targeted_needs_four_classes_and_a_positive_target_count():
  model_fn = _linear_model(np.zeros((16, 3), np.float32),
                           np.zeros(3, np.float32))
  x = np.zeros((1, 4, 4, 1), np.float32)
  with pytest.raises(ValueError, match="at least 4 classes, got 3"):
    apgd_lib.apgd_targeted(model_fn, x, [0], 0.1)
  with pytest.raises(ValueError, match="targets must be an int >= 1"):
    apgd_lib.apgd_targeted(model_fn, x, [0], 0.1, targets=0)
