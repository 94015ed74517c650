"""Channel pruning: BN-aware scores, one global threshold, exact narrow rebuilds."""

import numpy as np
import pytest
import tf_keras as keras

import user_models
from rsr_tf import channels
from rsr_tf import config
from rsr_tf import convert
from rsr_tf import layers as rsr_layers
from rsr_tf import models


def _user_model(sequential=False):
  """28x28x1: Conv2D-BN-ReLU-MaxPool-Conv2D-BN-ReLU-GAP-Dense."""
  layers = [
      keras.layers.Conv2D(16, 3, padding="same", name="c1"),
      keras.layers.BatchNormalization(name="b1"),
      keras.layers.ReLU(name="r1"),
      keras.layers.MaxPooling2D(name="pool"),
      keras.layers.Conv2D(32, 3, padding="same", name="c2"),
      keras.layers.BatchNormalization(name="b2"),
      keras.layers.ReLU(name="r2"),
      keras.layers.GlobalAveragePooling2D(name="gap"),
      keras.layers.Dense(5, name="head")]
  if sequential:
    return keras.Sequential([keras.Input((28, 28, 1))] + layers)
  x = inputs = keras.Input((28, 28, 1))
  for layer in layers:
    x = layer(x)
  return keras.Model(inputs, x)


def _mobile_model():
  """A depthwise conv (multiplier 2) between two convs, then Flatten-Dense."""
  inputs = keras.Input((12, 12, 3))
  x = keras.layers.Conv2D(16, 3, padding="same", name="c1")(inputs)
  x = keras.layers.BatchNormalization(name="b1")(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2,
                                   name="dw")(x)
  x = keras.layers.BatchNormalization(name="bdw")(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
  x = keras.layers.BatchNormalization(name="b2")(x)
  x = keras.layers.MaxPooling2D()(x)
  x = keras.layers.Flatten()(x)
  return keras.Model(inputs, keras.layers.Dense(5, name="head")(x))


def _randomise(model, seed=0):
  """Batch norms and biases as after training: zeroed filters give constants."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      c = layer.gamma.shape[0]
      layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 1, c),
                         rng.normal(0, 0.3, c), rng.uniform(0.5, 2, c)])
    elif getattr(layer, "use_bias", False) and hasattr(layer, "bias"):
      layer.bias.assign(rng.normal(0, 0.5, layer.bias.shape))
  return model


def _zero(model, filters):
  """Sets the kernels of {conv name: output channels} to zero."""
  for name, indices in filters.items():
    kernel = model.get_layer(name).kernel
    values = kernel.numpy()
    values[..., list(indices)] = 0
    kernel.assign(values)


def _others(width, removed):
  return tuple(i for i in range(width) if i not in set(removed))


def _images(shape, n=4, seed=1):
  return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype("float32")


USER_REMOVED = {"c1": (0, 2, 3, 5, 8, 9, 12, 15), "c2": tuple(range(1, 32, 2))}


def _zeroed_user_model():
  model = _randomise(_user_model())
  _zero(model, USER_REMOVED)
  return model


def _user_keep():
  return {"c1": _others(16, USER_REMOVED["c1"]),
          "c2": _others(32, USER_REMOVED["c2"])}


def test_zeroed_filters_are_removed_and_the_outputs_stay():
  model = _zeroed_user_model()
  exact = channels.plan_for(model, _user_keep())
  # The zeroed filters score 0, the lowest: the threshold lands on them.
  plan = channels.plan(model, exact.macs_removed, multiple=8)
  assert plan.keep == _user_keep()
  assert plan.threshold == 0.0
  narrow = channels.rebuild(model, plan)
  images = _images((28, 28, 1))
  np.testing.assert_allclose(narrow(images), model(images), atol=1e-5)
  assert narrow.get_layer("c1").filters == 8
  assert narrow.get_layer("c2").filters == 16
  assert narrow.get_layer("c2").kernel.shape == (3, 3, 8, 16)
  assert narrow.get_layer("head").kernel.shape == (16, 5)
  assert narrow.count_params() == plan.params_after < model.count_params()
  assert channels.macs(narrow) == plan.macs_after < channels.macs(model)
  assert channels.macs(model) == plan.macs_before
  # The fold is a map, not a bias: zero padding changes it at the border...
  fold = narrow.get_layer("c2_fold").fixed_map().numpy()
  assert np.abs(fold[0, 0] - fold[7, 7]).max() > 1e-2
  # ...and without it the outputs would differ.
  fold_layer = narrow.get_layer("c2_fold")
  fold_layer.fold.assign(np.zeros(fold_layer.fold.shape, np.float32))
  assert np.abs(narrow(images) - model(images)).max() > 1e-2


def test_resnet20_narrows_exactly_the_inner_convs_of_its_blocks():
  model = _randomise(models.build("resnet20", num_classes=10, noise="none",
                                  input_shape=(16, 16, 3)))
  blocks = [f"s{s}b{b}" for s in (1, 2, 3) for b in (1, 2, 3)]
  plan = channels.plan(model, 0.3)
  assert set(plan.widths) == {f"{b}_conv1" for b in blocks}
  assert sorted(line.split(":")[0] for line in plan.skipped) == sorted(
      ["stem_conv"] + [f"{b}_conv2" for b in blocks])
  assert all("_add (Add)" in line for line in plan.skipped)
  removed = {"s1b2_conv1": range(0, 16, 2), "s2b1_conv1": range(8),
             "s3b3_conv1": range(10, 42)}
  _zero(model, removed)
  exact = channels.plan_for(model, {name: _others(model.get_layer(
      name).filters, list(indices)) for name, indices in removed.items()})
  narrow = channels.rebuild(model, exact)
  images = _images((16, 16, 3), n=2)
  np.testing.assert_allclose(narrow(images), model(images), atol=1e-5, rtol=1e-5)
  # The residual stream keeps its width.
  assert narrow.get_layer("s3b3_conv2").filters == 64
  assert narrow.get_layer("s3b3_conv1").filters == 32
  assert narrow.count_params() < model.count_params()


@pytest.mark.parametrize("mode", ["channel", "element"])
def test_a_noisy_model_keeps_its_alphas_and_its_outputs_with_the_noise_off(mode):
  noisy = convert.add_weight_noise(_randomise(_mobile_model()), mode)
  rng = np.random.default_rng(2)
  for alpha in rsr_layers.alphas(noisy):
    alpha.assign(rng.uniform(0.1, 0.5, alpha.shape))
  _zero(noisy, {"c1": range(0, 16, 2), "c2": range(8, 16)})
  keep = {"c1": tuple(range(1, 16, 2)), "c2": tuple(range(8))}
  narrow = channels.rebuild(noisy, channels.plan_for(noisy, keep))
  old = {layer.name: layer.alpha.numpy() for layer in rsr_layers.noisy_layers(noisy)}
  new = {layer.name: layer for layer in rsr_layers.noisy_layers(narrow)}
  assert all(new[name].noise == mode for name in old)
  c1, c2 = list(keep["c1"]), list(keep["c2"])
  if mode == "channel":  # one alpha per output channel
    expected = {"c1": old["c1"][c1], "dw": old["dw"][c1],  # [in, multiplier]
                "c2": old["c2"][c2], "head": old["head"]}
  else:  # one alpha per weight
    flat = (np.arange(36)[:, None] * 16 + c2).ravel()  # Flatten's rows
    expected = {"c1": old["c1"][..., c1], "dw": old["dw"][:, :, c1],
                "c2": old["c2"][:, :, (np.array(c1)[:, None] * 2 + [0, 1]).ravel()][
                    ..., c2],
                "head": old["head"][flat]}
  for name, values in expected.items():
    np.testing.assert_array_equal(new[name].alpha.numpy(), values)
  images = _images((12, 12, 3))
  with rsr_layers.noise_enabled_as(noisy, False), \
      rsr_layers.noise_enabled_as(narrow, False):
    np.testing.assert_allclose(narrow(images), noisy(images), atol=1e-5)
  assert np.abs(narrow(images) - narrow(images)).max() > 0, "noise stays on"


def test_a_rebuilt_resnet_converts_to_no_more_ops_than_its_layers():
  # The folds' fixed maps reach TFLite as constants to add, not as extra
  # convolutions of ones run at every invoke (which made narrow models slower).
  from rsr_tf import conversion
  from rsr_tf import litert
  model = _randomise(models.build("resnet20", num_classes=10, noise="none",
                                  input_shape=(16, 16, 3)))
  narrow = channels.rebuild(model, channels.plan(model, 0.5))
  folds = [l for l in narrow.layers if isinstance(l, channels.ChannelFold)]
  assert folds
  ops = litert.op_counts(conversion.convert_tflite(
      narrow, "tflite_float", sparse=False, representative=None, noisy=False)[0])
  convs = [l for l in narrow.layers if isinstance(l, keras.layers.Conv2D)]
  assert ops["CONV_2D"] == len(convs)
  images = _images((16, 16, 3), n=2)
  interpreter = litert.Model(model_content=conversion.convert_tflite(
      narrow, "tflite_float", False, None, False)[0])
  np.testing.assert_allclose(interpreter(images), narrow(images), atol=1e-4)


def test_widths_are_multiples_and_the_target_is_met_on_a_sequential_model():
  model = _randomise(_user_model(sequential=True))
  for target in (0.3, 0.6):
    plan = channels.plan(model, target)  # the default multiple
    assert plan.macs_removed >= target
    multiple = config.CHANNEL_MULTIPLE
    for name, (before, after) in plan.widths.items():
      assert after == len(plan.keep[name])
      # A multiple, or the whole layer, or the floor of 8 channels.
      assert after % multiple == 0 or after in (before, 8)
      assert 8 <= after <= before
    narrow = channels.rebuild(model, plan)
    assert channels.macs(narrow) == plan.macs_after
    assert narrow.count_params() == plan.params_after
  with pytest.raises(ValueError, match="out of reach"):
    channels.plan(model, 0.99)
  with pytest.raises(ValueError, match="multiple"):
    channels.plan(model, 0.5, multiple=0)


def test_one_global_threshold_removes_the_lowest_relative_scores():
  model = _randomise(_user_model())
  relative = channels.relative_scores(channels.filter_scores(model))
  assert all(abs(np.mean(v) - 1) < 1e-6 for v in relative.values())
  for target in (0.2, 0.5):
    plan = channels.plan(model, target, multiple=1, min_channels=1)
    kept = np.concatenate([relative[n][list(k)] for n, k in plan.keep.items()])
    gone = np.concatenate([np.delete(relative[n], list(k))
                           for n, k in plan.keep.items()])
    assert gone.size and gone.max() <= plan.threshold < kept.min()
    # The lowest such threshold: the last channel removed, kept, misses it.
    name = next(n for n, v in relative.items() if plan.threshold in v)
    back = int(np.flatnonzero(relative[name] == plan.threshold)[0])
    keep = {**plan.keep, name: plan.keep[name] + (back,)}
    assert channels.plan_for(model, keep).macs_removed < target <= plan.macs_removed


def test_the_bn_aware_score_ignores_a_rescale_that_keeps_the_function():
  # W_f, b_f, moving_mean_f -> s * them and gamma_f -> gamma_f / s leave the
  # network's output as it is; the folded norm ||W_f|| |gamma_f| /
  # sqrt(var_f + eps) stays too, while ||W_f|| alone changes by |s|.
  model = _randomise(_user_model())
  images = _images((28, 28, 1))
  before_out = model(images).numpy()
  before = channels.filter_scores(model)["c2"]
  conv, bn = model.get_layer("c2"), model.get_layer("b2")
  raw_before = np.linalg.norm(conv.kernel.numpy()[..., 3])
  for f, s in ((3, 3.7), (5, -0.4)):
    for variable, factor in ((conv.kernel, s), (conv.bias, s),
                             (bn.moving_mean, s), (bn.gamma, 1 / s)):
      values = variable.numpy()
      values[..., f] *= factor
      variable.assign(values)
  np.testing.assert_allclose(model(images), before_out, atol=1e-5)
  np.testing.assert_allclose(channels.filter_scores(model)["c2"], before,
                             rtol=1e-5)
  assert np.linalg.norm(conv.kernel.numpy()[..., 3]) == pytest.approx(
      3.7 * raw_before, rel=1e-5)
  # Without a batch norm after it, a conv's score is its filter norm.
  inputs = keras.Input((8, 8, 1))
  x = keras.layers.Conv2D(8, 3, activation="relu", name="bare")(inputs)
  x = keras.layers.Conv2D(4, 3)(keras.layers.Dropout(0.1)(x))
  bare = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
  np.testing.assert_allclose(
      channels.filter_scores(bare)["bare"],
      np.linalg.norm(bare.get_layer("bare").kernel.numpy().reshape(-1, 8), axis=0),
      rtol=1e-6)


def test_a_conv_that_feeds_an_add_is_named_and_left_whole():
  inputs = keras.Input((8, 8, 3))
  stem = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
  x = keras.layers.Conv2D(8, 3, padding="same", name="branch")(stem)
  x = keras.layers.BatchNormalization()(x)
  x = keras.layers.Add(name="residual")([x, stem])
  x = keras.layers.Conv2D(16, 3, name="after")(keras.layers.ReLU()(x))
  x = keras.layers.GlobalAveragePooling2D()(x)
  model = keras.Model(inputs, keras.layers.Dense(3)(x))
  plan = channels.plan(model, 0.05)
  assert "branch: its channels reach residual (Add), which is not channel-wise" \
      in plan.skipped
  assert {line.split(":")[0] for line in plan.skipped} == {"stem", "branch"}
  assert set(plan.widths) == {"after"}
  narrow = channels.rebuild(model, plan)
  assert narrow.get_layer("branch").filters == 8
  assert narrow.get_layer("after").filters == 8
  with pytest.raises(ValueError, match="branch.*residual"):
    channels.plan_for(model, {"branch": range(4)})


def test_a_rebuilt_model_round_trips_through_a_keras_file(tmp_path):
  model = _zeroed_user_model()
  narrow = channels.rebuild(model, channels.plan_for(model, _user_keep()))
  path = str(tmp_path / "narrow.keras")
  narrow.save(path)
  images = _images((28, 28, 1))
  for loaded in (models.load(path), keras.models.load_model(
      path, custom_objects={**models.CUSTOM_OBJECTS, **channels.CUSTOM_OBJECTS},
      safe_mode=True, compile=False)):
    assert isinstance(loaded.get_layer("c2_fold"), channels.ChannelFold)
    np.testing.assert_array_equal(loaded(images), narrow(images))


@pytest.mark.parametrize("conv", [None, {"input_size": [6, 5], "strides": [2, 1],
                                         "padding": "same",
                                         "dilation_rate": [1, 1]}])
def test_channel_fold_config_round_trip(conv):
  shape = (3, 3, 4) if conv else (6, 5, 4)
  layer = channels.ChannelFold(shape, conv=conv, activation="relu")
  layer.build((None, 3 if conv else 6, 5, 4))
  layer.fold.assign(np.random.default_rng(0).normal(size=shape))
  clone = channels.ChannelFold.from_config(layer.get_config())
  clone.build((None, 3 if conv else 6, 5, 4))
  clone.fold.assign(layer.fold)
  assert clone.conv == layer.conv
  np.testing.assert_array_equal(clone.fixed_map(), layer.fixed_map())
  x = np.full((1, 3 if conv else 6, 5, 4), -0.1, np.float32)
  np.testing.assert_array_equal(clone(x), np.maximum(x + layer.fixed_map(), 0))


def test_subclassed_and_wrapped_models_are_refused():
  model = user_models.Subclassed()
  model(np.zeros((1, 8, 8, 3), np.float32))
  for function in (channels.filter_scores, lambda m: channels.plan(m, 0.5)):
    with pytest.raises(convert.ModelError, match="subclassed"):
      function(model)
