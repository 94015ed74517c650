"""Kernel penalties of RSR: lasso (L1), group lasso over filters, weight decay."""

import rsr_tf  # noqa: F401
import tensorflow as tf
import tf_keras as keras


def l1_norm(kernel):
  """Sum of |w| over the kernel."""
  return tf.reduce_sum(tf.abs(kernel))


def group_norm(kernel):
  """Sum over output filters of the L2 norm of each filter's weights.

  The last axis indexes output filters for both conv (HWIO) and dense
  ([in, out]) kernels, so one group is one prunable filter or unit.
  """
  groups = tf.reshape(kernel, (-1, tf.shape(kernel)[-1]))
  # The epsilon keeps the gradient finite once a whole filter reaches zero.
  return tf.reduce_sum(tf.sqrt(tf.reduce_sum(tf.square(groups), axis=0) + 1e-12))


@keras.saving.register_keras_serializable(package="rsr_tf")
class KernelPenalty(keras.regularizers.Regularizer):
  """lambda_l1 * sum|w| + lambda_group * sum_f ||w_f||_2 + weight_decay/2 * sum w^2.

  Attached to conv and dense kernels only, so biases, batch-norm parameters
  and the noise scales alpha are neither decayed nor pushed to zero. Weight
  decay is the coupled (SGD, PyTorch-style) form: its gradient is
  `weight_decay * w`.

  Args:
    lambda_l1: element-wise lasso strength (the paper's penalty).
    lambda_group: group lasso strength over output filters (structured).
    weight_decay: L2 coefficient.
  """

  def __init__(self, lambda_l1=0.0, lambda_group=0.0, weight_decay=0.0):
    for name, value in (("lambda_l1", lambda_l1), ("lambda_group", lambda_group),
                        ("weight_decay", weight_decay)):
      if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    self.lambda_l1 = float(lambda_l1)
    self.lambda_group = float(lambda_group)
    self.weight_decay = float(weight_decay)

  def active(self):
    """Whether any strength is non-zero."""
    return bool(self.lambda_l1 or self.lambda_group or self.weight_decay)

  def __call__(self, kernel):
    kernel = tf.cast(kernel, tf.float32)
    penalty = tf.constant(0.0)
    if self.lambda_l1:
      penalty += self.lambda_l1 * l1_norm(kernel)
    if self.lambda_group:
      penalty += self.lambda_group * group_norm(kernel)
    if self.weight_decay:
      penalty += 0.5 * self.weight_decay * tf.reduce_sum(tf.square(kernel))
    return penalty

  def get_config(self):
    return {"lambda_l1": self.lambda_l1, "lambda_group": self.lambda_group,
            "weight_decay": self.weight_decay}
