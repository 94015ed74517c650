"""Square attack (Andriushchenko et al. 2020): black-box random search, L-inf and L2."""

import functools
import math

import rsr_tf  # noqa: F401
import numpy as np
import tensorflow as tf

from rsr_tf import registry
from rsr_tf.perturbation import fooling_margin
from rsr_tf.perturbation import l2_norm
from rsr_tf.perturbation import per_example
from rsr_tf.perturbation import TINY

# Iterations, on a 10,000-query budget, after which the square's area fraction
# p halves (the paper's schedule; AutoAttack rescales it to the actual budget).
_HALVING_AT = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_DEFAULT_P_INIT = {"linf": 0.8, "l2": 0.1}


def _check_arguments(norm, eps, queries, p_init, noise_draws, batch_size, seed):
  """Raises a one-line ValueError naming the first bad static argument."""
  def is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

  registry.check_norm(norm)
  if not isinstance(eps, float) or not eps >= 0 or math.isinf(eps):
    raise ValueError(f"eps must be a finite python float >= 0, got {eps!r}")
  for name, value in (("queries", queries), ("noise_draws", noise_draws),
                      ("batch_size", batch_size)):
    if not is_int(value) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  if p_init is not None and (isinstance(p_init, bool)
                             or not isinstance(p_init, (int, float))
                             or not 0 < p_init <= 1):
    raise ValueError(f"p_init must be None or a number in (0, 1], got {p_init!r}")
  if not is_int(seed):
    raise ValueError(f"seed must be an int, got {seed!r}")


def _stage_starts(queries):
  """First loop iteration of each halving stage of p, for a `queries` budget.

  The reference maps iteration i to int(i / queries * 10000) and halves p
  once that passes each entry of the paper's schedule; this is the same map
  in exact integer arithmetic.

  Args:
    queries: the query budget, an int >= 1.

  Returns:
    A tuple of 9 non-decreasing ints: iteration i is in stage
    `sum(i >= start for start in _stage_starts(queries))`.
  """
  # floor(i * 10000 / queries) > b  <=>  i >= ceil((b + 1) * queries / 10000).
  return tuple(-(-(b + 1) * queries // 10000) for b in _HALVING_AT)


def _square_sizes(norm, p_init, height, width):
  """Side of the square in each of the 10 stages of the p schedule.

  A square covers a fraction p of the image's pixels, p = p_init / 2**stage.
  L2 squares are odd (their eta pattern has a centre) and at least 3 wide.

  Args:
    norm: "linf" or "l2".
    p_init: initial fraction of pixels a square covers.
    height: image height.
    width: image width.

  Returns:
    A tuple of 10 ints in [1, min(height, width)].
  """
  sizes = []
  for stage in range(len(_HALVING_AT) + 1):
    side = int(round(math.sqrt(p_init / 2 ** stage * height * width)))
    if norm == "l2":
      side = max(side, 3)
      side += 1 - side % 2
    else:
      side = max(side, 1)
    sizes.append(min(side, height, width))
  return tuple(sizes)


def _eta_rectangle(rows, cols):
  """Nested-rectangle bump of the L2 attack, unit L2 norm ([rows, cols]).

  Pixel (i, j) at Chebyshev distance d from the centre gets
  sum_{k=d}^{K-1} 1 / (k + 1)**2: the sum of the rectangles 2k + 1 wide,
  around the centre, that contain it.
  """
  if rows == 0:
    return np.zeros((0, cols))
  centre_r, centre_c = rows // 2, cols // 2
  rings = max(centre_r, centre_c) + 1
  dist = np.maximum(np.abs(np.arange(rows)[:, None] - centre_r),
                    np.abs(np.arange(cols)[None, :] - centre_c))
  tail = np.cumsum(1.0 / np.arange(rings, 0, -1) ** 2)[::-1]  # tail[d]
  bump = tail[dist]
  return bump / np.sqrt(np.sum(bump ** 2))


def _eta(side):
  """The L2 attack's square update pattern: a positive bump over a negative
  one, unit L2 norm, [side, side] (Andriushchenko et al. 2020, fig. 2)."""
  pattern = np.concatenate([_eta_rectangle(side // 2, side),
                            -_eta_rectangle(side - side // 2, side)], axis=0)
  return pattern / np.sqrt(np.sum(pattern ** 2))


def _eta_table(max_side):
  """eta(s) in the top-left corner of a zero [max_side, max_side] plane, for
  every s in [0, max_side]: a gather table, since s varies in the loop."""
  table = np.zeros((max_side + 1, max_side, max_side), np.float32)
  for side in range(1, max_side + 1):
    table[side, :side, :side] = _eta(side)
  return table


def _random_signs(shape, key):
  """Uniform +-1 floats from a stateless key."""
  bits = tf.random.stateless_uniform(shape, key, 0, 2, dtype=tf.int32)
  return tf.cast(2 * bits - 1, tf.float32)


def _random_corners(key, n, side, height, width):
  """Top-left corners [n] (rows, cols) of side x side squares, uniform over
  every position that fits (the reference never picks the last one)."""
  row_key, col_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
  rows = tf.random.stateless_uniform([n], row_key, 0, height - side + 1, tf.int32)
  cols = tf.random.stateless_uniform([n], col_key, 0, width - side + 1, tf.int32)
  return rows, cols


def _offsets(corner, side, length):
  """[n, length] position of each pixel relative to the square's start, and
  whether it lies inside the square."""
  relative = tf.range(length)[None, :] - corner[:, None]
  return relative, (relative >= 0) & (relative < side)


def _window(rows, cols, side, height, width):
  """[n, H, W, 1] float mask of the squares at (rows, cols)."""
  _, in_rows = _offsets(rows, side, height)
  _, in_cols = _offsets(cols, side, width)
  inside = in_rows[:, :, None] & in_cols[:, None, :]
  return tf.cast(inside, tf.float32)[..., None]


def _per_channel_norm(z):
  """L2 norm over height and width, [n, 1, 1, C]."""
  return tf.sqrt(tf.reduce_sum(tf.square(z), axis=[1, 2], keepdims=True))


def _linf_init(key, x, eps):
  """Vertical stripes: each column of each channel moves by +eps or -eps."""
  n, _, width, channels = x.shape
  return tf.clip_by_value(x + eps * _random_signs([n, 1, width, channels], key),
                          0.0, 1.0)


def _linf_propose(key, x, x_best, eps, side):
  """Resets one random square per example, per channel, to a corner of the
  eps-ball: x +- eps (as far as [0, 1] allows)."""
  n, height, width, channels = x.shape
  corner_key, sign_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
  rows, cols = _random_corners(corner_key, n, side, height, width)
  mask = _window(rows, cols, side, height, width)
  # x_best is within eps of x, so +-2 eps and the clip below land on x +- eps.
  step = 2.0 * eps * _random_signs([n, 1, 1, channels], sign_key)
  x_new = tf.clip_by_value(x_best + mask * step, x - eps, x + eps)
  return tf.clip_by_value(x_new, 0.0, 1.0)


def _l2_init(key, x, eps):
  """A centred grid of eta squares, s = min(H, W) // 5 wide, each with a
  random sign per channel and a random orientation, rescaled to norm eps."""
  n, height, width, channels = x.shape
  side = max(min(height, width) // 5, 1)
  tiles_h, tiles_w = height // side, width // side
  pattern = tf.constant(_eta(side), tf.float32)
  sign_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
  flip = tf.random.stateless_uniform([n, tiles_h, tiles_w, 1, 1], flip_key) < 0.5
  tiles = tf.where(flip, tf.transpose(pattern), pattern)  # [n, th, tw, s, s]
  tiles = tf.reshape(tf.transpose(tiles, [0, 1, 3, 2, 4]),
                     [n, tiles_h * side, tiles_w * side, 1])
  signs = _random_signs([n, tiles_h, tiles_w, channels], sign_key)
  signs = tf.repeat(tf.repeat(signs, side, axis=1), side, axis=2)
  top, left = (height - tiles_h * side) // 2, (width - tiles_w * side) // 2
  delta = tf.pad(tiles * signs, [[0, 0], [top, height - top - tiles_h * side],
                                 [left, width - left - tiles_w * side], [0, 0]])
  return tf.clip_by_value(
      x + delta * eps / (per_example(l2_norm(delta)) + TINY), 0.0, 1.0)


def _placed_eta(table, side, rows, cols, flip, height, width):
  """[n, H, W, 1]: eta(side) on each example's square, optionally transposed,
  zero elsewhere."""
  rel_rows, in_rows = _offsets(rows, side, height)
  rel_cols, in_cols = _offsets(cols, side, width)
  shape = [tf.shape(rows)[0], height, width]
  rel_rows = tf.broadcast_to(rel_rows[:, :, None], shape)
  rel_cols = tf.broadcast_to(rel_cols[:, None, :], shape)
  flip = flip[:, None, None]
  # A square window: transposing the pattern is swapping the two offsets.
  index = tf.stack([tf.where(flip, rel_cols, rel_rows),
                    tf.where(flip, rel_rows, rel_cols)], axis=-1)
  limit = table.shape[-1] - 1
  values = tf.gather_nd(table[side], tf.clip_by_value(index, 0, limit))
  inside = tf.cast(in_rows[:, :, None] & in_cols[:, None, :], tf.float32)
  return (values * inside)[..., None]


def _l2_propose(key, x, x_best, eps, side):
  """Moves the perturbation's mass from a second random square, plus the
  unused budget, into a first one, shaped as eta; rescales to norm eps.

  Per channel, the first square's new content has the norm of the old
  content of both squares together plus an equal share of the unspent
  budget, eps**2 - ||delta||**2: the L2 update of the paper (alg. 3).
  """
  n, height, width, channels = x.shape
  keys = tf.unstack(tf.random.experimental.stateless_split(key, 4))
  rows, cols = _random_corners(keys[0], n, side, height, width)
  rows2, cols2 = _random_corners(keys[1], n, side, height, width)
  flip = tf.random.stateless_uniform([n], keys[2]) < 0.5
  signs = _random_signs([n, 1, 1, channels], keys[3])
  table = tf.constant(_eta_table(min(height, width)))

  delta = x_best - x
  first = _window(rows, cols, side, height, width)
  both = tf.maximum(first, _window(rows2, cols2, side, height, width))
  old = delta * first
  proposal = (_placed_eta(table, side, rows, cols, flip, height, width) * signs
              + old / (_per_channel_norm(old) + TINY))
  spare = tf.maximum(eps ** 2 - tf.square(per_example(l2_norm(delta))), 0.0)
  target = tf.sqrt(spare / channels + tf.square(_per_channel_norm(delta * both)))
  proposal = proposal / (_per_channel_norm(proposal) + TINY) * target
  delta = delta * (1.0 - both) + proposal
  return tf.clip_by_value(
      x + delta * eps / (per_example(l2_norm(delta)) + TINY), 0.0, 1.0)


# Norm name (registry.NORMS) -> (initial point, candidate step).
_NORMS = {"linf": (_linf_init, _linf_propose), "l2": (_l2_init, _l2_propose)}


@functools.lru_cache(maxsize=16)
def _compiled_search(model_fn, norm, noise_draws):
  """The whole query loop for one batch, compiled once per (model_fn, norm,
  noise_draws) and batch shape; budget, eps, schedule and seed are tensors."""
  init, propose = _NORMS[norm]

  def mean_margin(x, labels):
    # Separate calls, not a tiled batch: each call draws its own weight noise.
    # True logit minus the best other: < 0 means fooled, as search wants.
    margins = [-fooling_margin(tf.cast(model_fn(x), tf.float32), labels)
               for _ in range(noise_draws)]
    return tf.add_n(margins) / noise_draws

  # No reduce_retracing: the steps build masks and tiles from static shapes,
  # so a relaxed [None, ...] trace would not work; one trace per batch shape.
  @tf.function
  def search(x, labels, valid, eps, iterations, starts, sizes, seed):
    init_key, loop_key = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    x_best = init(init_key, x, eps)
    best = mean_margin(x_best, labels)
    used = tf.ones_like(labels)

    def unfinished(i, x_best, best, used):
      del x_best, used
      return (i < iterations) & tf.reduce_any(valid & (best >= 0))

    def step(i, x_best, best, used):
      side = sizes[tf.reduce_sum(tf.cast(i >= starts, tf.int32))]
      key = tf.random.experimental.stateless_fold_in(loop_key, i)
      candidate = propose(key, x, x_best, eps, side)
      margin = mean_margin(candidate, labels)
      # Examples already fooled keep their point and stop counting queries;
      # the rest move only when the margin loss strictly improves.
      active = valid & (best >= 0)
      accept = active & (margin < best)
      x_best = tf.where(accept[:, None, None, None], candidate, x_best)
      return (i + 1, x_best, tf.where(accept, margin, best),
              used + tf.cast(active, used.dtype))

    _, x_best, best, used = tf.while_loop(
        unfinished, step, (tf.constant(0), x_best, best, used))
    return x_best, used, best

  return search


def square(model_fn, x, y, eps, *, norm="linf", queries=5000, p_init=None,
           noise_draws=1, batch_size=128, seed=0):
  """Square attack (Andriushchenko, Croce, Flammarion, Hein 2020), untargeted.

  Score-based black-box random search on the margin loss (true logit minus
  the best other), as in AutoAttack's standard version: no gradient is
  ever taken, so `model_fn` may be non-differentiable. From a random start
  (vertical stripes for L-inf, a grid of eta squares for L2), each query
  tries changing one random square per example, and keeps the change only
  when the margin strictly drops. An example stops, and stops counting
  queries, once its margin is <= 0 (fooled). The square covers a fraction p
  of the pixels, halving at the paper's iterations of a 10,000-query budget,
  rescaled to `queries`.

  Args:
    model_fn: maps float32 images in [0, 1], [N, H, W, C], to logits
      [N, classes]; may be stochastic. Reuse one callable: the compiled
      search is cached on it.
    x: images in [0, 1], [N, H, W, C], any size and channel count.
    y: int labels [N] to move away from.
    eps: budget in pixel units, a python float >= 0 (e.g. 8/255 L-inf,
      0.5 L2).
    norm: "linf" or "l2".
    queries: budget per example, an int >= 1, counting the initial point.
    p_init: initial fraction of pixels per square; None means 0.8 for L-inf
      and 0.1 for L2 (the paper's and AutoAttack's values).
    noise_draws: model calls averaged per query, for noisy models: the loss
      of a query is the mean margin over that many separate calls, so a
      query costs `noise_draws` forward passes.
    batch_size: examples searched together; the last batch is padded.
    seed: seed of the random start and squares (stateless: same seed, same
      squares).

  Returns:
    (x_adv, queries_used): float32 images within eps of `x` in the chosen
    norm and in [0, 1] (for examples never fooled, the lowest-margin point
    found), and the int32 number of queries (not forward passes) each
    example used, <= `queries`.

  Raises:
    ValueError: a bad static argument, or `x` not [N, H, W, C] in [0, 1].
  """
  _check_arguments(norm, eps, queries, p_init, noise_draws, batch_size, seed)
  x = np.asarray(x, np.float32)
  y = np.asarray(y).astype(np.int32)
  if x.ndim != 4:
    raise ValueError(f"x must be images [N, H, W, C], got shape {x.shape}")
  if y.shape != x.shape[:1]:
    raise ValueError(f"y must be labels of shape {x.shape[:1]}, got {y.shape}")
  if not (np.all(x >= 0) and np.all(x <= 1)):
    raise ValueError("square input must be images in [0, 1]")
  if p_init is None:
    p_init = _DEFAULT_P_INIT[norm]
  n, height, width, _ = x.shape
  search = _compiled_search(model_fn, norm, noise_draws)
  schedule = dict(
      eps=tf.constant(eps, tf.float32),
      iterations=tf.constant(queries - 1),
      starts=tf.constant(_stage_starts(queries), tf.int32),
      sizes=tf.constant(_square_sizes(norm, p_init, height, width),
                        tf.int32))
  x_adv, used = np.empty_like(x), np.empty(n, np.int32)
  batch = max(min(batch_size, n), 1)
  for start in range(0, n, batch):
    count = min(batch, n - start)
    pad = batch - count
    # Padding with copies keeps one batch shape, so the last batch does not
    # retrace; padded rows are marked invalid so they never hold the loop.
    xb = np.concatenate([x[start:start + count], np.repeat(x[-1:], pad, 0)])
    yb = np.concatenate([y[start:start + count], np.repeat(y[-1:], pad, 0)])
    valid = np.arange(batch) < count
    adv, spent, _ = search(tf.constant(xb), tf.constant(yb), tf.constant(valid),
                           seed=tf.constant([seed, start], tf.int64), **schedule)
    x_adv[start:start + count] = adv.numpy()[:count]
    used[start:start + count] = spent.numpy()[:count]
  return x_adv, used
