"""Tests for rsr_tf.data: sources, subsets, statistics and input pipelines."""

import shutil
import threading
import time

import numpy as np
from PIL import Image
import pytest

import rsr_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from rsr_tf import config
from rsr_tf import data
from rsr_tf import pipelines
from rsr_tf import tfds_source
import tensorflow as tf

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")


# ---------------------------------------------------------------------------
# balanced_subset


def test_balanced_subset_class_ordered_takes_first_of_each_round_robin():
  labels = np.array([0] * 5 + [1] * 5 + [2] * 5)
  picked = data.balanced_subset(labels, 6)
  np.testing.assert_array_equal(picked, [0, 5, 10, 1, 6, 11])
  assert picked.dtype == np.int64


def test_balanced_subset_shuffled_labels():
  labels = np.array([2, 0, 1, 0, 2, 1, 1, 0])
  # Round 0: first 0 (idx 1), first 1 (idx 2), first 2 (idx 0); then round 1.
  np.testing.assert_array_equal(data.balanced_subset(labels, 4), [1, 2, 0, 3])
  picked = data.balanced_subset(labels, 6)
  np.testing.assert_array_equal(np.bincount(labels[picked]), [2, 2, 2])


def test_balanced_subset_skips_exhausted_class():
  labels = np.array([0, 0, 0, 0, 1])
  np.testing.assert_array_equal(data.balanced_subset(labels, 3), [0, 4, 1])


@pytest.mark.parametrize("n", [0, 8, 100])
def test_balanced_subset_all_keeps_original_order(n):
  labels = np.array([2, 0, 1, 0, 2, 1, 1, 0])
  np.testing.assert_array_equal(data.balanced_subset(labels, n), np.arange(8))


# ---------------------------------------------------------------------------
# Image folder


def _color(label, index):
  return (10 * label + index, 100 + label, 200 - index)


def _write_image(path, color, size=(32, 32)):
  width, height = size
  pixels = np.zeros((height, width, 3), dtype=np.uint8)
  pixels[...] = color
  Image.fromarray(pixels).save(path)


def _make_folder(root, classes=("cat", "dog", "emu"), train=4, test=2,
                 odd_size=None):
  for split, count in (("train", train), ("test", test)):
    for label, name in enumerate(classes):
      class_dir = root / split / name
      class_dir.mkdir(parents=True)
      for index in range(count):
        # Optionally one image of another size, for the resize path.
        size = (odd_size if odd_size and (split, label, index) == ("train", 1, 2)
                else (32, 32))
        # Upper-case extensions count as images too.
        ext = ".PNG" if index == 3 else ".png"
        _write_image(class_dir / f"{index:03d}{ext}", _color(label, index),
                     size)
      (class_dir / "notes.txt").write_text("not an image")
  return root


def test_load_image_folder(tmp_path):
  root = _make_folder(tmp_path, odd_size=(40, 36))
  ds = data.load_image_folder(str(root), image_size=(32, 32))
  assert ds.class_names == ("cat", "dog", "emu")
  assert ds.num_classes == 3
  assert ds.source == f"image_folder:{root}"
  assert ds.train.images.shape == (12, 32, 32, 3)
  assert ds.test.images.shape == (6, 32, 32, 3)
  assert ds.train.images.dtype == np.uint8
  assert ds.train.labels.dtype == np.int64
  np.testing.assert_array_equal(ds.train.labels, np.repeat([0, 1, 2], 4))
  np.testing.assert_array_equal(ds.test.labels, np.repeat([0, 1, 2], 2))
  for i, label in enumerate(ds.train.labels):
    # Constant images stay constant through the resize.
    expected = np.broadcast_to(np.array(_color(label, i % 4), np.uint8),
                               (32, 32, 3))
    np.testing.assert_array_equal(ds.train.images[i], expected)


def test_a_fingerprint_knows_the_data_but_not_where_it_lies(tmp_path):
  here = _make_folder(tmp_path / "here")
  moved = tmp_path / "there"
  shutil.copytree(here, moved)
  first = data.fingerprint(data.load_image_folder(str(here)))
  assert first == data.fingerprint(data.load_image_folder(str(moved)))
  assert first["examples"] == {"train": 12, "validation": 0, "test": 6}
  fewer = data.fingerprint(data.load_image_folder(str(moved), train_limit=6))
  assert fewer["labels_sha256"] != first["labels_sha256"]
  held_out = data.fingerprint(data.hold_out(
      data.load_image_folder(str(moved)), 3))
  assert held_out["examples"]["validation"] == 3
  assert held_out["labels_sha256"] != first["labels_sha256"]


def test_an_image_of_another_size_is_named_unless_resizing(tmp_path):
  root = _make_folder(tmp_path, odd_size=(40, 36))
  with pytest.raises(data.DataError) as info:
    data.load_image_folder(str(root))
  message = str(info.value)
  assert "dog/002.png is 36x40" in message and "--image_size" in message
  assert "\n" not in message


@pytest.mark.parametrize("size,channels", [((40, 24), 3), ((16, 16), 1)])
def test_load_image_folder_any_size_and_channels(tmp_path, size, channels):
  root = _make_folder(tmp_path)
  ds = data.load_image_folder(str(root), image_size=size, channels=channels)
  assert ds.train.images.shape == (12, *size, channels)
  assert ds.image_shape == (*size, channels)
  mean, std = data.channel_stats(ds.train.images)
  assert mean.shape == (channels,) and std.shape == (channels,)
  batch, _ = next(iter(pipelines.train_pipeline(ds.train, 4, seed=0)))
  assert batch.shape == (4, *size, channels)


def test_load_image_folder_limit_is_balanced_and_applied_before_decoding(
    tmp_path, capsys):
  root = _make_folder(tmp_path)
  ds = data.load_image_folder(str(root), train_limit=6, eval_limit=3)
  np.testing.assert_array_equal(ds.train.labels, [0, 1, 2, 0, 1, 2])
  np.testing.assert_array_equal(ds.test.labels, [0, 1, 2])
  for i, label in enumerate(ds.train.labels):
    np.testing.assert_array_equal(ds.train.images[i, 0, 0],
                                  _color(label, i // 3))
  err = capsys.readouterr().err
  assert f"decoding 6 train images from {root / 'train'}" in err
  assert f"decoding 3 test images from {root / 'test'}" in err


def test_load_image_folder_missing_root(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(data.DataError, match="train/<class>/") as info:
    data.load_image_folder(str(missing))
  assert str(missing) in str(info.value)


def test_load_image_folder_missing_test(tmp_path):
  root = _make_folder(tmp_path)
  shutil.rmtree(root / "test")
  with pytest.raises(data.DataError, match="test/") as info:
    data.load_image_folder(str(root))
  assert str(root) in str(info.value)


def test_load_image_folder_empty_class(tmp_path):
  root = _make_folder(tmp_path)
  (root / "train" / "yak").mkdir()
  (root / "test" / "yak").mkdir()
  with pytest.raises(data.DataError, match="no images") as info:
    data.load_image_folder(str(root))
  assert str(root / "train" / "yak") in str(info.value)


def test_load_image_folder_no_class_folders(tmp_path):
  (tmp_path / "train").mkdir()
  (tmp_path / "test").mkdir()
  with pytest.raises(data.DataError, match="no class folders") as info:
    data.load_image_folder(str(tmp_path))
  assert str(tmp_path / "train") in str(info.value)


def test_load_image_folder_class_mismatch(tmp_path):
  root = _make_folder(tmp_path)
  (root / "test" / "emu").rename(root / "test" / "elk")
  with pytest.raises(data.DataError, match="different class folders") as info:
    data.load_image_folder(str(root))
  assert "'emu'" in str(info.value) and "'elk'" in str(info.value)


# ---------------------------------------------------------------------------
# TensorFlow Datasets


@pytest.fixture(name="host_checks")
def _host_checks(monkeypatch):
  """Makes the download host look reachable and counts the checks."""
  calls = []

  def reachable(timeout_s=5.0):
    calls.append(timeout_s)
    return True

  monkeypatch.setattr(tfds_source, "_download_host_reachable", reachable)
  return calls


def test_load_tfds_mocked(tmp_path, host_checks):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=20):
    ds = data.load_tfds("cifar10", data_dir=str(tmp_path), train_limit=10)
  assert host_checks  # not prepared, so reachability was checked
  assert ds.source == "tfds:cifar10"
  assert ds.num_classes == 10
  assert ds.train.images.shape == (10, 32, 32, 3)
  assert ds.test.images.shape == (20, 32, 32, 3)
  assert ds.train.images.dtype == np.uint8
  assert ds.train.labels.dtype == np.int64
  counts = np.bincount(ds.train.labels, minlength=10)
  assert counts.max() - counts[counts > 0].min() <= 1


@pytest.mark.parametrize("name,shape,classes", [
    ("mnist", (28, 28, 1), 10), ("fashion_mnist", (28, 28, 1), 10),
    ("cifar100", (32, 32, 3), 100), ("svhn_cropped", (32, 32, 3), 10)])
def test_load_tfds_keeps_the_datasets_own_shape(tmp_path, host_checks, name,
                                                shape, classes):
  del host_checks
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=5):
    ds = data.load_tfds(name, data_dir=str(tmp_path))
  assert ds.train.images.shape == (5, *shape)
  assert ds.num_classes == classes
  assert ds.source == f"tfds:{name}"


def test_load_tfds_converts_grayscale_28x28_when_asked(tmp_path, host_checks):
  del host_checks
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=5):
    ds = data.load_tfds("mnist", data_dir=str(tmp_path), image_size=(32, 32),
                        channels=3)
  assert ds.train.images.shape == (5, 32, 32, 3)
  assert ds.train.images.dtype == np.uint8
  images = ds.train.images.astype(int)
  # Gray stays gray: the three channels are copies.
  np.testing.assert_array_equal(images[..., 0], images[..., 1])
  np.testing.assert_array_equal(images[..., 0], images[..., 2])


def test_load_tfds_offline_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, "_download_host_reachable",
                      lambda timeout_s=5.0: False)
  start = time.monotonic()
  with pytest.raises(data.DataError, match="--image_folder") as info:
    data.load_tfds("cifar10", data_dir=str(tmp_path / "tfds"))
  assert time.monotonic() - start < 10
  assert "cifar10" in str(info.value)
  assert "\n" not in str(info.value)


def test_download_host_check_returns_despite_hanging_connect(monkeypatch):
  release = threading.Event()

  def hang(*args, **kwargs):
    del args, kwargs
    release.wait(30)
    raise OSError("released")

  monkeypatch.setattr(tfds_source.socket, "create_connection", hang)
  start = time.monotonic()
  try:
    assert not tfds_source._download_host_reachable(timeout_s=0.2)  # pylint: disable=protected-access
    assert time.monotonic() - start < 3
  finally:
    release.set()


# ---------------------------------------------------------------------------
# Embedded sample and load()


def test_load_embedded_sample():
  ds = data.load_embedded_sample()
  assert ds.source == "embedded:cifar10_sample"
  assert ds.class_names == CIFAR10_CLASSES
  assert ds.train.images.shape == (2000, 32, 32, 3)
  assert ds.test.images.shape == (500, 32, 32, 3)
  assert ds.train.images.dtype == np.uint8
  assert ds.train.labels.dtype == np.int64
  np.testing.assert_array_equal(np.bincount(ds.train.labels), [200] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test.labels), [50] * 10)
  assert ds.train.images.any() and ds.test.images.any()
  # Real photos, not a constant fill.
  assert ds.train.images.std() > 20


def test_load_embedded_sample_limit():
  ds = data.load_embedded_sample(train_limit=100, eval_limit=30)
  np.testing.assert_array_equal(np.bincount(ds.train.labels), [10] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test.labels), [3] * 10)
  np.testing.assert_array_equal(ds.train.labels[:10], np.arange(10))


def test_load_dispatches_on_config(tmp_path):
  root = _make_folder(tmp_path)
  from_folder = data.load(config.DataConfig(image_folder=str(root),
                                            train_limit=3))
  assert from_folder.source.startswith("image_folder:")
  assert len(from_folder.train) == 3
  embedded = data.load(config.DataConfig(embedded_sample=True, eval_limit=20))
  assert embedded.source == "embedded:cifar10_sample"
  assert len(embedded.test) == 20


def test_hold_out_takes_the_last_of_each_class_whatever_the_seed(tmp_path):
  root = _make_folder(tmp_path, train=5)
  whole = data.load(config.DataConfig(image_folder=str(root)))
  held = data.load(config.DataConfig(image_folder=str(root), validation_size=6,
                                     seed=3))
  assert len(held.train) == 9 and len(held.validation) == 6
  np.testing.assert_array_equal(np.bincount(held.validation.labels), [2, 2, 2])
  # Disjoint, and together the whole training split.
  rows = lambda split: {im.tobytes() for im in split.images}  # noqa: E731
  assert not rows(held.train) & rows(held.validation)
  assert rows(held.train) | rows(held.validation) == rows(whole.train)
  last = [i for i in range(15) if i % 5 >= 3]  # files are class by class
  np.testing.assert_array_equal(held.validation.images, whole.train.images[last])
  assert held.test is whole.test or len(held.test) == len(whole.test)


def test_hold_out_of_too_many_images_is_one_line(tmp_path):
  root = _make_folder(tmp_path, train=2)
  with pytest.raises(data.DataError, match="--validation_size=4 leaves too few"):
    data.load(config.DataConfig(image_folder=str(root), validation_size=4))
  with pytest.raises(config.ConfigError, match="--validation_size"):
    config.DataConfig(validation_size=-1).validate()


def test_split_rejects_wrong_shape():
  with pytest.raises(ValueError, match="uint8"):
    data.Split(images=np.zeros((2, 28, 28), np.uint8),
               labels=np.zeros(2, np.int64))
  with pytest.raises(ValueError, match="uint8"):
    data.Split(images=np.zeros((2, 28, 28, 1), np.float32),
               labels=np.zeros(2, np.int64))


# ---------------------------------------------------------------------------
# Statistics and pipelines


def _random_split(n, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
  # Label i marks image i, so a batch can be traced back to its sources.
  return data.Split(images=images, labels=np.arange(n, dtype=np.int64))


def _is_crop_or_flip(augmented, original):
  """Whether `augmented` is a pad-4 crop of `original`, maybe mirrored."""
  padded = np.pad(original, ((4, 4), (4, 4), (0, 0)))
  for top in range(9):
    for left in range(9):
      crop = padded[top:top + 32, left:left + 32]
      if (np.array_equal(augmented, crop) or
          np.array_equal(augmented, crop[:, ::-1])):
        return True
  return False


def test_channel_stats_matches_numpy():
  images = np.random.default_rng(1).integers(0, 256, (7, 32, 32, 3),
                                             dtype=np.uint8)
  mean, std = data.channel_stats(images)
  flat = images.reshape(-1, 3).astype(np.float64) / 255
  assert mean.dtype == np.float32 and mean.shape == (3,)
  assert std.dtype == np.float32 and std.shape == (3,)
  np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(std, flat.std(axis=0), rtol=1e-5)


def test_train_pipeline_batches_without_augmentation():
  split = _random_split(70)
  ds = pipelines.train_pipeline(split, batch_size=16, seed=3, augment=False)
  assert ds.element_spec[0].shape == (16, 32, 32, 3)
  epoch = list(ds)
  assert len(epoch) == 4  # 70 // 16, the remainder is dropped
  seen = []
  for images, labels in epoch:
    assert images.dtype == tf.float32 and images.shape == (16, 32, 32, 3)
    assert labels.dtype == tf.int64 and labels.shape == (16,)
    np.testing.assert_allclose(images.numpy(),
                               split.images[labels.numpy()] / 255, atol=1e-6)
    seen.extend(labels.numpy())
  assert len(set(seen)) == 64
  next_epoch = np.concatenate([labels.numpy() for _, labels in ds])
  assert not np.array_equal(seen, next_epoch)  # reshuffled


def test_train_pipeline_is_repeatable_for_a_seed():
  split = _random_split(40)

  def first_epoch(seed):
    return [(x.numpy(), y.numpy())
            for x, y in pipelines.train_pipeline(split, 8, seed=seed)]

  a, b, c = first_epoch(5), first_epoch(5), first_epoch(6)
  assert all(np.array_equal(x1, x2) and np.array_equal(y1, y2)
             for (x1, y1), (x2, y2) in zip(a, b))
  assert not all(np.array_equal(y1, y2) for (_, y1), (_, y2) in zip(a, c))


def test_train_pipeline_augmentation_is_crop_and_flip():
  split = _random_split(32)
  images, labels = next(iter(pipelines.train_pipeline(split, 32, seed=0)))
  images = images.numpy()
  assert images.min() >= 0.0 and images.max() <= 1.0
  as_uint8 = np.round(images * 255).astype(np.uint8)
  changed = 0
  for augmented, label in zip(as_uint8, labels.numpy()):
    assert _is_crop_or_flip(augmented, split.images[label])
    changed += not np.array_equal(augmented, split.images[label])
  assert changed > 16  # 1 in 162 draws is the identity


def test_augment_batch_constant_image_only_gains_zero_padding():
  images = tf.fill([8, 32, 32, 3], 0.5)
  out = pipelines.augment_batch(images, tf.random.Generator.from_seed(0)).numpy()
  assert out.shape == (8, 32, 32, 3) and out.dtype == np.float32
  assert set(np.unique(out)) <= {0.0, 0.5}
  # At most 4 padded rows and 4 padded columns end up in view.
  assert ((out == 0.5).reshape(8, -1).sum(axis=1) >= 28 * 28 * 3).all()


def test_augment_batch_is_pure_crop_flip_and_random_per_image():
  original = np.random.default_rng(2).random((32, 32, 3)).astype(np.float32)
  batch = np.repeat(original[np.newaxis], 16, axis=0)
  out = pipelines.augment_batch(tf.constant(batch),
                           tf.random.Generator.from_seed(1)).numpy()
  assert out.min() >= 0.0 and out.max() <= 1.0
  for image in out:
    assert _is_crop_or_flip(image, original)
  assert len({image.tobytes() for image in out}) > 1


@pytest.mark.parametrize("use_generator", [True, False])
def test_augment_batch_in_tf_function(use_generator):
  generator = tf.random.Generator.from_seed(3) if use_generator else None

  @tf.function
  def augment(images):
    return pipelines.augment_batch(images, generator)

  original = np.random.default_rng(4).random((32, 32, 3)).astype(np.float32)
  batch = tf.constant(np.repeat(original[np.newaxis], 4, axis=0))
  first, second = augment(batch).numpy(), augment(batch).numpy()
  assert first.shape == (4, 32, 32, 3) and first.dtype == np.float32
  for image in np.concatenate([first, second]):
    assert _is_crop_or_flip(image, original)
  assert not np.array_equal(first, second)  # fresh randomness per call


def test_eval_pipeline_keeps_partial_batch_in_order():
  split = _random_split(10)
  batches = list(pipelines.eval_pipeline(split, batch_size=4))
  assert [labels.shape[0] for _, labels in batches] == [4, 4, 2]
  images = np.concatenate([x.numpy() for x, _ in batches])
  labels = np.concatenate([y.numpy() for _, y in batches])
  assert images.dtype == np.float32 and labels.dtype == np.int64
  np.testing.assert_array_equal(labels, np.arange(10))
  np.testing.assert_allclose(images, split.images / 255, atol=1e-6)


def test_a_corrupt_image_is_named_or_skipped(tmp_path):
  root = _make_folder(tmp_path)
  corrupt = root / "train" / "dog" / "zz_broken.png"
  corrupt.write_bytes(b"this is not a png")
  with pytest.raises(data.DataError, match="zz_broken.png is not a readable image"):
    data.load_image_folder(str(root))
  ds = data.load_image_folder(str(root), skip_bad_images=True)
  assert ds.train.images.shape == (12, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(ds.train.labels), [4, 4, 4])
