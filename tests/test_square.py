"""Square attack: fools planted weak models, never leaves the eps-ball, only queries."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from rsr_tf import square as square_module
from rsr_tf.square import square

SIDE = 8
PIXELS = SIDE * SIDE
EPS = {"linf": 8 / 255, "l2": 0.5}
# Margin of the planted model: 2 w.(x - 0.5), with w = +-1/64 per pixel, so
# within the eps-ball it drops by at most 2 eps ||w||_q (q dual to the norm).
_W = np.where(np.random.default_rng(0).random(PIXELS) < 0.5, -1.0, 1.0) / PIXELS
MAX_DROP = {"linf": 2 * EPS["linf"] * np.abs(_W).sum(),
            "l2": 2 * EPS["l2"] * np.linalg.norm(_W)}
KERNEL = np.stack([_W, -_W, np.zeros(PIXELS)], axis=1).astype(np.float32)
BIAS = np.array([-0.5 * _W.sum(), 0.5 * _W.sum(), -1.0], np.float32)


def planted(margins, seed=0):
  """8x8x1 images in about [0.3, 0.7] on which the linear model's margin is
  exactly `margins` (alternately for class 0 and class 1)."""
  margins = np.asarray(margins, np.float64)
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.3, 0.7, (len(margins), PIXELS))
  sign = np.where(np.arange(len(margins)) % 2 == 0, 1.0, -1.0)
  # Move along w until w.(x - 0.5) = +-margin / 2.
  shift = (sign * margins / 2 - (x - 0.5) @ _W) / (_W @ _W)
  x = x + shift[:, None] * _W
  return x.reshape(-1, SIDE, SIDE, 1).astype(np.float32), (sign < 0).astype(np.int64)


def linear_logits(x):
  return np.reshape(x, (len(x), -1)) @ KERNEL + BIAS


def predictions(x, model_fn=None):
  """Labels the attacked model gives: the search stops at margins just
  below 0, so judge in its precision (float32), not numpy's float64."""
  if model_fn is not None:
    return np.argmax(model_fn(tf.constant(x)).numpy(), axis=1)
  return np.argmax(linear_logits(x).astype(np.float32), axis=1)


def distance(x_adv, x, norm):
  delta = np.reshape(x_adv - x, (len(x), -1)).astype(np.float64)
  if norm == "linf":
    return np.abs(delta).max(axis=1)
  return np.linalg.norm(delta, axis=1)


def assert_in_ball(x_adv, x, norm):
  assert np.all(distance(x_adv, x, norm) <= EPS[norm] * (1 + 1e-5))
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def numpy_model(sigma=0.0, seed=0):
  """The planted linear model computed in numpy behind tf.numpy_function (no
  gradient exists), plus additive logit noise; counts its calls."""
  rng, calls = np.random.default_rng(seed), []

  def logits(x):
    calls.append(len(x))
    z = linear_logits(x)
    return (z + sigma * rng.standard_normal(z.shape)).astype(np.float32)

  def model_fn(x):
    out = tf.numpy_function(logits, [x], tf.float32, stateful=True)
    out.set_shape([x.shape[0], 3])
    return out

  return model_fn, calls


@pytest.fixture(scope="module")
def keras_fn():
  """The planted linear model as a tf_keras model; one callable, so the
  compiled search is shared by the tests that use it."""
  model = keras.Sequential([keras.Input((SIDE, SIDE, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(3)])
  model.layers[-1].set_weights([KERNEL, BIAS])
  return lambda x: model(x, training=False)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fools_a_weak_model_inside_the_ball(keras_fn, norm):
  x, y = planted(np.full(32, 0.25 * MAX_DROP[norm]))
  assert np.all(predictions(x) == y)
  x_adv, used = square(keras_fn, x, y, EPS[norm], norm=norm, queries=300)
  assert_in_ball(x_adv, x, norm)
  fooled = predictions(x_adv, keras_fn) != y
  assert fooled.mean() >= 0.9
  assert np.all(used[fooled] < 300), "fooled examples stop early"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_margin_beyond_eps_is_never_fooled_and_spends_the_budget(keras_fn, norm):
  x, y = planted(np.full(32, 1.2 * MAX_DROP[norm]))
  x_adv, used = square(keras_fn, x, y, EPS[norm], norm=norm, queries=200)
  assert_in_ball(x_adv, x, norm)
  assert np.all(predictions(x_adv, keras_fn) == y)
  # It searched: the best point found lowers the margin, and every example
  # used every query (the initial point counts as one).
  assert np.all(np.diff(linear_logits(x_adv), axis=1)[:, 0] * np.where(y, 1, -1)
                < np.diff(linear_logits(x), axis=1)[:, 0] * np.where(y, 1, -1))
  np.testing.assert_array_equal(used, 200)


def test_seeded_and_stops_early_only_for_fooled_examples(keras_fn):
  margins = np.where(np.arange(32) < 16, 0.25, 1.2) * MAX_DROP["linf"]
  x, y = planted(margins, seed=1)
  first = square(keras_fn, x, y, EPS["linf"], queries=300, seed=3)
  again = square(keras_fn, x, y, EPS["linf"], queries=300, seed=3)
  other = square(keras_fn, x, y, EPS["linf"], queries=300, seed=4)
  np.testing.assert_array_equal(first[0], again[0])
  np.testing.assert_array_equal(first[1], again[1])
  assert not np.array_equal(first[0], other[0]), "the seed is used"
  x_adv, used = first
  fooled = predictions(x_adv, keras_fn) != y
  assert fooled[:16].mean() >= 0.9 and not fooled[16:].any()
  assert np.all(used[fooled] < 300) and np.all(used >= 1)
  np.testing.assert_array_equal(used[~fooled], 300)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_black_box_model_without_gradients(norm):
  model_fn, calls = numpy_model()
  x, y = planted(np.full(16, 0.25 * MAX_DROP[norm]), seed=2)
  x_adv, used = square(model_fn, x, y, EPS[norm], norm=norm, queries=300)
  assert_in_ball(x_adv, x, norm)
  assert (predictions(x_adv) != y).mean() >= 0.9
  # One call per query for the whole batch: the loop ran as long as the
  # slowest example needed.
  assert len(calls) == used.max()


def test_noise_draws_average_a_model_too_noisy_for_one_draw():
  x, y = planted(np.full(32, 0.4 * MAX_DROP["linf"]), seed=3)
  truly_fooled, cost = {}, {}
  for draws in (1, 16):
    model_fn, calls = numpy_model(sigma=0.003, seed=0)
    x_adv, used = square(model_fn, x, y, EPS["linf"], queries=400,
                         noise_draws=draws)
    assert_in_ball(x_adv, x, "linf")
    truly_fooled[draws] = (predictions(x_adv) != y).mean()
    cost[draws] = (len(calls), used.max())
  # One draw accepts lucky noise and stops on noise-made "successes".
  assert truly_fooled[16] >= truly_fooled[1] + 0.3, truly_fooled
  for draws, (passes, most_queries) in cost.items():
    assert passes == draws * most_queries, "a query is `draws` forward passes"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_returns_x_exactly_through_the_search(norm):
  model_fn, calls = numpy_model()
  x, y = planted(np.full(8, 0.25 * MAX_DROP[norm]), seed=4)
  x_adv, used = square(model_fn, x, y, 0.0, norm=norm, queries=20)
  np.testing.assert_array_equal(x_adv, x)
  np.testing.assert_array_equal(used, 20)
  assert len(calls) == 20


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_any_image_shape_and_a_padded_last_batch(norm):
  model = keras.Sequential([
      keras.Input((6, 10, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
      keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
  model_fn = lambda x: model(x, training=False)  # noqa: E731
  x = np.random.default_rng(5).uniform(0, 1, (5, 6, 10, 3)).astype(np.float32)
  x[0] = 0.0
  x[1] = 1.0
  y = np.argmax(model.predict(x, verbose=0), axis=1)
  x_adv, used = square(model_fn, x, y, EPS[norm], norm=norm, queries=30,
                       batch_size=2)
  assert x_adv.shape == x.shape and used.shape == (5,)
  assert_in_ball(x_adv, x, norm)
  assert np.all((used >= 1) & (used <= 30))
  search = square_module._compiled_search(model_fn, norm, 1)
  assert search.experimental_get_tracing_count() == 1, "the last batch retraced"
  # A new batch shape on the same callable gets its own trace.
  x_adv, _ = square(model_fn, x[:3], y[:3], EPS[norm], norm=norm, queries=5)
  assert_in_ball(x_adv, x[:3], norm)


def test_l2_step_is_the_papers_update():
  """The masked TF step equals the slice-based statement of the L2 update."""
  rng = np.random.default_rng(6)
  n, height, width, channels, side, eps = 4, 9, 7, 3, 5, 0.7
  x = rng.uniform(0.2, 0.8, (n, height, width, channels)).astype(np.float32)
  x_best = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype(np.float32)
  key = tf.constant([3, 4], tf.int64)
  got = square_module._l2_propose(key, tf.constant(x), tf.constant(x_best), eps,
                                  tf.constant(side)).numpy()
  # The same draws the step makes from its key.
  keys = tf.unstack(tf.random.experimental.stateless_split(key, 4))
  first = [t.numpy() for t in square_module._random_corners(
      keys[0], n, side, height, width)]
  second = [t.numpy() for t in square_module._random_corners(
      keys[1], n, side, height, width)]
  flips = (tf.random.stateless_uniform([n], keys[2]) < 0.5).numpy()
  signs = square_module._random_signs([n, 1, 1, channels], keys[3]).numpy()
  for i in range(n):
    delta = (x_best[i] - x[i]).astype(np.float64)
    one = np.s_[first[0][i]:first[0][i] + side, first[1][i]:first[1][i] + side]
    two = np.s_[second[0][i]:second[0][i] + side, second[1][i]:second[1][i] + side]
    union = np.zeros((height, width, 1))
    union[one] = union[two] = 1
    pattern = square_module._eta(side)
    pattern = pattern.T if flips[i] else pattern
    budget = np.sqrt(max(eps ** 2 - np.sum(delta ** 2), 0) / channels
                     + np.sum((delta * union) ** 2, axis=(0, 1)))
    new = pattern[..., None] * signs[i, 0, 0] + delta[one] / np.sqrt(
        np.sum(delta[one] ** 2, axis=(0, 1)))
    new *= budget / np.sqrt(np.sum(new ** 2, axis=(0, 1)))
    delta[two] = 0
    delta[one] = new
    want = np.clip(x[i] + delta * eps / np.linalg.norm(delta), 0, 1)
    np.testing.assert_allclose(got[i], want, atol=1e-6)


def test_schedule_follows_the_reference_rescaling():
  # Iteration i is in stage #{b : int(i / queries * 10000) > b}.
  for queries in (1, 7, 300, 5000):
    starts = square_module._stage_starts(queries)
    for i in range(queries):
      scaled = int(i / queries * 10000)
      assert sum(i >= s for s in starts) == sum(
          scaled > b for b in square_module._HALVING_AT)
  assert square_module._square_sizes("linf", 0.8, 32, 32)[:3] == (29, 20, 14)
  assert square_module._square_sizes("l2", 0.1, 32, 32)[-1] == 3
  eta = square_module._eta(5)
  np.testing.assert_allclose(np.sum(eta ** 2), 1.0)
  assert np.all(eta[:2] > 0) and np.all(eta[2:] < 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"norm": "l1"}, "norm must be one of"),
    ({"eps": 8}, "eps must be a finite python float"),
    ({"eps": -0.1}, "eps must be a finite python float"),
    ({"queries": 0}, "queries must be an int >= 1"),
    ({"queries": 10.0}, "queries must be an int >= 1"),
    ({"noise_draws": 0}, "noise_draws must be an int >= 1"),
    ({"batch_size": True}, "batch_size must be an int >= 1"),
    ({"p_init": 1.5}, "p_init must be None or a number"),
    ({"x": np.full((2, 8, 8, 1), 1.5, np.float32)}, r"in \[0, 1\]"),
    ({"x": np.full((2, 8, 8, 1), np.nan, np.float32)}, r"in \[0, 1\]"),
    ({"x": np.zeros((2, 64), np.float32)}, r"x must be images"),
    ({"y": np.zeros(3, np.int64)}, "y must be labels"),
])
def test_bad_arguments_are_named(kwargs, message):
  args = {"x": np.zeros((2, 8, 8, 1), np.float32), "y": np.zeros(2, np.int64),
          "eps": 0.1, **kwargs}
  with pytest.raises(ValueError, match=message):
    square(lambda x: x, args.pop("x"), args.pop("y"), args.pop("eps"), **args)
