"""PNI-W layers: noise statistics, gradients, the on/off switch, pruning, saving."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import helpers
from helpers import tiny_model
from rsr_tf import layers as rsr_layers
from rsr_tf import models
from rsr_tf import regularizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dense(noise="channel", alpha_init=0.25, scale=1.0, units=200, inputs=300):
  layer = rsr_layers.NoisyDense(units, noise=noise, alpha_init=alpha_init,
                                use_bias=False)
  layer.build((None, inputs))
  rng = np.random.default_rng(0)
  layer.kernel.assign(scale * rng.normal(0, 0.1, (inputs, units)).astype(np.float32))
  return layer


def _noise_std(layer):
  kernel = tf.convert_to_tensor(layer.kernel)
  return float(tf.math.reduce_std(layer.noisy_kernel(kernel) - kernel))


@pytest.mark.parametrize("noise", ["layer", "channel", "element"])
def test_noise_spread_scales_with_alpha_and_kernel_std(noise):
  base = _dense(noise)
  kernel_std = float(tf.math.reduce_std(base.kernel))
  assert _noise_std(base) == pytest.approx(0.25 * kernel_std, rel=0.03)
  assert _noise_std(_dense(noise, alpha_init=0.5)) == pytest.approx(
      0.5 * kernel_std, rel=0.03)
  assert _noise_std(_dense(noise, scale=3.0)) == pytest.approx(
      0.25 * 3 * kernel_std, rel=0.03)


def test_alpha_shapes_per_mode():
  assert _dense("layer").alpha.shape == ()
  assert _dense("channel").alpha.shape == (200,)
  assert _dense("element").alpha.shape == (300, 200)
  assert _dense("none").alpha is None


@pytest.mark.parametrize("graph", [False, True])
def test_gradient_reaches_alpha_and_kernel(graph):
  layer = rsr_layers.NoisyConv2D(4, 3, noise="channel")
  x = tf.random.uniform((2, 6, 6, 3))

  def grads():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(layer(x)))
    return tape.gradient(loss, [layer.alpha, layer.kernel])

  g_alpha, g_kernel = (tf.function(grads) if graph else grads)()
  assert float(tf.reduce_sum(tf.abs(g_alpha))) > 0
  assert float(tf.reduce_sum(tf.abs(g_kernel))) > 0
  assert np.all(np.abs(g_alpha.numpy()) > 0), "every channel's alpha learns"


@pytest.mark.parametrize("graph", [False, True])
def test_calls_differ_with_noise_on_and_match_with_it_off(graph):
  model = tiny_model()
  call = tf.function(lambda x: model(x, training=False)) if graph else (
      lambda x: model(x, training=False))
  x = tf.random.uniform((4, 8, 8, 3))
  assert not np.allclose(call(x), call(x))
  rsr_layers.set_noise_enabled(model, False)
  call = tf.function(lambda x: model(x, training=False)) if graph else call
  np.testing.assert_array_equal(call(x), call(x))


def test_noise_none_is_a_plain_layer():
  layer = rsr_layers.NoisyDense(3, noise="none")
  x = tf.random.uniform((2, 5))
  np.testing.assert_array_equal(layer(x), layer(x))
  assert len(layer.trainable_weights) == 2  # kernel and bias, no alpha


def test_pruned_weights_get_no_noise():
  layer = _dense()
  mask = np.random.default_rng(1).random(layer.kernel.shape) < 0.8
  layer.kernel.assign(np.where(mask, 0.0, layer.kernel.numpy()))
  noisy = layer.noisy_kernel(tf.convert_to_tensor(layer.kernel)).numpy()
  assert np.all(noisy[mask] == 0)
  assert np.all(noisy[~mask] != layer.kernel.numpy()[~mask])


def test_only_the_kernel_is_prunable():
  layer = _dense()
  assert layer.get_prunable_weights() == [layer.kernel]
  assert isinstance(layer, tfmot.sparsity.keras.PrunableLayer)
  wrapped = tfmot.sparsity.keras.prune_low_magnitude(
      rsr_layers.NoisyConv2D(4, 3), pruning_schedule=
      tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
  wrapped.build((None, 8, 8, 3))


def test_bad_arguments_raise_named_errors():
  with pytest.raises(ValueError, match="noise must be one of"):
    rsr_layers.NoisyDense(3, noise="gaussian")
  with pytest.raises(ValueError, match="alpha_init"):
    rsr_layers.NoisyConv2D(3, 3, alpha_init=-1.0)


@pytest.mark.parametrize("cls", [rsr_layers.NoisyConv2D, rsr_layers.NoisyDense])
def test_config_round_trip(cls):
  layer = cls(5, **({"kernel_size": 3} if cls is rsr_layers.NoisyConv2D else {}),
              noise="element", alpha_init=0.1, noise_enabled=False)
  clone = cls.from_config(layer.get_config())
  assert (clone.noise, clone.alpha_init, clone.noise_enabled) == ("element", 0.1, False)


def test_keras_file_round_trip_in_safe_mode(tmp_path):
  model = models.build("resnet20", noise="channel",
                       kernel_regularizer=regularizers.KernelPenalty(1e-5, 0, 3e-4))
  model.layers[2].alpha.assign(tf.fill(model.layers[2].alpha.shape, 0.4))
  path = str(tmp_path / "m.keras")
  model.save(path)
  loaded = models.load(path)
  for a, b in zip(model.get_weights(), loaded.get_weights()):
    np.testing.assert_array_equal(a, b)
  assert loaded.layers[2].noise == "channel" and loaded.layers[2].noise_enabled
  assert float(tf.add_n(loaded.losses)) == pytest.approx(float(tf.add_n(model.losses)))
  rsr_layers.set_noise_enabled(model, False)
  rsr_layers.set_noise_enabled(loaded, False)
  x = tf.random.uniform((2, 32, 32, 3))
  np.testing.assert_allclose(model(x), loaded(x), atol=1e-6)


def test_channel_pad_shortcut():
  layer = rsr_layers.ChannelPadShortcut(8, stride=2)
  x = tf.random.uniform((1, 4, 4, 4))
  y = layer(x).numpy()
  assert y.shape == (1, 2, 2, 8)
  np.testing.assert_array_equal(y[..., 2:6], x.numpy()[:, ::2, ::2, :])
  assert np.all(y[..., :2] == 0) and np.all(y[..., 6:] == 0)
  clone = rsr_layers.ChannelPadShortcut.from_config(layer.get_config())
  assert (clone.filters, clone.stride) == (8, 2)


def test_a_fresh_process_loads_a_saved_model(tmp_path):
  """Only `rsr_tf.models` imported: custom objects must not depend on luck."""
  path = str(tmp_path / "m.keras")
  models.build("resnet20", kernel_regularizer=regularizers.KernelPenalty(1e-5)).save(path)
  code = ("import sys; from rsr_tf import models; m = models.load(sys.argv[1]); "
          "assert len(m.losses) == 20, m.losses; print('ok')")
  result = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code,
                           path], capture_output=True, text=True, cwd=ROOT)
  assert result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("graph", [False, True])
def test_noise_std_over_the_kept_weights_ignores_the_pruned_zeros(graph):
  kernel = np.zeros((4, 4, 2, 8), np.float32)
  kept = np.random.default_rng(0).normal(0.0, 0.1, (4, 4, 2, 2)).astype(np.float32)
  kernel[..., :2] = kept  # 75% pruned
  std = (tf.function(rsr_layers.kernel_std) if graph else rsr_layers.kernel_std)
  assert float(std(tf.constant(kernel), "kept")) == pytest.approx(
      np.std(kept), rel=1e-5)
  assert float(std(tf.constant(kernel), "all")) == pytest.approx(
      np.std(kernel), rel=1e-5)
  assert float(std(tf.zeros((3, 3)), "kept")) == 0.0


def test_noise_std_is_a_saved_switch():
  layer = rsr_layers.NoisyConv2D(4, 3, noise_std="kept")
  assert rsr_layers.NoisyConv2D.from_config(layer.get_config()).noise_std == "kept"
  old = {k: v for k, v in layer.get_config().items() if k != "noise_std"}
  assert rsr_layers.NoisyConv2D.from_config(old).noise_std == "all", \
      "models saved before the switch keep the formula's sigma"
  with pytest.raises(ValueError, match="noise_std must be one of all, kept"):
    rsr_layers.NoisyDense(3, noise_std="some")


def _pruned_dense(units=40, inputs=50, keep=0.3):
  """A NoisyDense with 70% of its kernel zero, output 0 all zero, alphas varied."""
  layer = _dense(units=units, inputs=inputs)
  rng = np.random.default_rng(1)
  kernel = layer.kernel.numpy() * (rng.uniform(size=(inputs, units)) < keep)
  kernel[:, 0] = 0.0
  layer.kernel.assign(kernel)
  layer.alpha.assign(np.linspace(0.1, 0.6, units).astype(np.float32))
  return layer, kernel != 0


def _standardised_noise(layer, kept, draws):
  """`draws` noise terms of `layer`, kept weights divided by alpha * std(w)."""
  kernel = tf.convert_to_tensor(layer.kernel)
  noise = np.stack([layer.noise_term(kernel).numpy() for _ in range(draws)])
  scale = layer.alpha.numpy() * float(rsr_layers.kernel_std(kernel))
  return noise, (noise / scale)[:, kept]


@pytest.mark.parametrize("kept_draw", [False, True])
def test_kept_draw_keeps_the_distribution_of_the_noise(kept_draw):
  layer, kept = _pruned_dense()
  layer.kept_draw = kept_draw
  noise, z = _standardised_noise(layer, kept, draws=40)
  np.testing.assert_array_equal(noise[:, ~kept], 0.0)
  bound = helpers.normal_ks_bound(z.size)
  assert helpers.normal_ks_distance(z) < bound
  # The check can fail: a noise scale 10% off is caught.
  assert helpers.normal_ks_distance(1.1 * z) > bound
  # Independent draws: neighbouring kept weights, and one weight across calls.
  pairs = (z[:, :-1] * z[:, 1:]).ravel()
  assert abs(pairs.mean()) < 4 / np.sqrt(pairs.size)
  calls = (z[:-1] * z[1:]).ravel()
  assert abs(calls.mean()) < 4 / np.sqrt(calls.size)
  # A draw shared by two weights would be caught by the same check.
  shared = z.copy()
  shared[:, 1::2] = shared[:, 0:-1:2][:, :shared[:, 1::2].shape[1]]
  planted = (shared[:, :-1] * shared[:, 1:]).ravel()
  assert abs(planted.mean()) > 4 / np.sqrt(planted.size)


def test_kept_draw_is_never_saved():
  layer, _ = _pruned_dense()
  assert "kept_draw" not in layer.get_config()
