"""The threat model's geometry, shared by our attacks (APGD, Square).

The L-inf and L2 balls around an image inside [0, 1]: norms per image,
projection, the steepest-ascent step, a random start on the sphere, and the
logit margin that says whether an example is fooled.
"""

import rsr_tf  # noqa: F401  (before TensorFlow: selects Keras 2)
import tensorflow as tf

from rsr_tf.registry import NORMS  # noqa: F401  (re-exported for the attacks)

# Bisection steps of the L2 projection: 2^-25 is below float32's resolution
# of the scale in [0, 1], so more steps cannot move the result.
_BISECTION_STEPS = 25
# Keeps normalisations (and APGD's DLR loss) finite where a norm or a
# logit gap is 0.
TINY = 1e-12


def true_logit(logits, labels):
  """Each example's logit of its own label."""
  return tf.gather(logits, labels, axis=-1, batch_dims=1)


def fooling_margin(logits, labels):
  """Largest other logit minus the true one: > 0 exactly when fooled."""
  others = tf.where(tf.one_hot(labels, tf.shape(logits)[-1]) > 0,
                    tf.fill(tf.shape(logits), logits.dtype.min), logits)
  return tf.reduce_max(others, axis=-1) - true_logit(logits, labels)


def per_example(values):
  """[N] -> [N, 1, 1, 1], to scale or select whole images."""
  return tf.reshape(values, [-1, 1, 1, 1])


def l2_norm(images):
  return tf.sqrt(tf.reduce_sum(tf.square(images), axis=[1, 2, 3]))


def linf_norm(images):
  return tf.reduce_max(tf.abs(images), axis=[1, 2, 3])


def project_linf(z, x, eps):
  """The closest point to z in the L-inf ball around x, inside [0, 1]."""
  return tf.clip_by_value(tf.clip_by_value(z, x - eps, x + eps), 0.0, 1.0)


def project_l2(z, x, eps):
  """The closest point to z in the L2 ball around x, inside [0, 1].

  Exact, unlike scaling into the ball and then clipping (which AutoAttack
  does): the problem is separable up to one multiplier, so the answer is
  clip(x + t (z - x), 0, 1) for the largest t in [0, 1] that stays in the
  ball. Its distance from x grows with t, so bisection finds t; keeping the
  feasible end of the bracket keeps the result inside the ball.
  """
  delta = z - x

  def at(t):
    return tf.clip_by_value(x + per_example(t) * delta, 0.0, 1.0)

  def inside(t):
    return l2_norm(at(t) - x) <= eps

  def halve(low, high):
    middle = 0.5 * (low + high)
    ok = inside(middle)
    return tf.where(ok, middle, low), tf.where(ok, high, middle)

  ones = tf.ones_like(delta[:, 0, 0, 0])
  # A loop op, not an unrolled python loop: it keeps the graph small, and
  # tracing an unrolled one took seconds.
  low, _ = tf.while_loop(lambda *_: True, halve, (tf.zeros_like(ones), ones),
                         maximum_iterations=_BISECTION_STEPS)
  return at(tf.where(inside(ones), ones, low))


PROJECTIONS = {"linf": project_linf, "l2": project_l2}


def ascent_direction(grad, norm):
  """The steepest-ascent step of unit size in `norm`."""
  if norm == "linf":
    return tf.sign(grad)
  return grad / (per_example(l2_norm(grad)) + TINY)


def random_start(x, eps, norm, seed):
  """A random point on the eps-sphere around x, clipped to [0, 1].

  As AutoAttack: L-inf scales uniform noise until its largest entry is eps,
  L2 scales Gaussian noise to norm eps.
  """
  if norm == "linf":
    noise = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
    scale = linf_norm(noise)
  else:
    noise = tf.random.stateless_normal(tf.shape(x), seed)
    scale = l2_norm(noise)
  # Projected, not just clipped: float rounding could put it a hair outside.
  return PROJECTIONS[norm](x + eps * noise / (per_example(scale) + TINY),
                            x, eps)
