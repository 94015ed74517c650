"""A short seeded RSR run under one or more strategies, for test_distribute.py.

It runs as its own process: logical CPU devices and multi-worker collectives
must be set up before TensorFlow initialises its runtime, which pytest's
process has long done.

  python tests/distribute_job.py --out=DIR --runs=default,mirrored [--cpus=2]
  TF_CONFIG=... python tests/distribute_job.py --out=DIR --runs=multi_worker,default

Each run trains the same tiny noisy-layer model from the same weights on the
same pipeline (`pipelines.train_pipeline`, shuffled and augmented from its seed)
with PGD, the kernel penalty and tfmot polynomial pruning, then writes
DIR/<run>.npz (the chief only, under multi_worker, which reads TF_CONFIG):
the final weights, measured sparsity, tfmot's pruning step and the history.

Runs: default, mirrored (over the --cpus logical CPUs), multi_worker, and
mirrored_noisy: weight noise and PGD's random start on. The others turn both
off, since each replica draws its own noise and its own random start, and
then a distributed run cannot be compared with one device weight by weight.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import rsr_tf  # noqa: E402,F401  (before TensorFlow: selects Keras 2)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

GLOBAL_BATCH = 16
EXAMPLES = 64  # 4 steps an epoch
EPOCHS = 2
TARGET_SPARSITY = 0.5
# Two training calls per step (clean and PGD), so 16 calls in all; the
# schedule reaches its target at call 12 and keeps it.
PRUNE_END_CALL = 12


def _images():
  """32x32 images whose class is the brightest channel."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, EXAMPLES)
  images = rng.integers(0, 100, (EXAMPLES, 32, 32, 3))
  images[np.arange(EXAMPLES), :, :, labels] += 120
  return images.astype(np.uint8), labels.astype(np.int64)


def _tiny_model(noise, penalty):
  import tf_keras as keras
  from rsr_tf import layers
  inputs = keras.Input((32, 32, 3))
  x = layers.NoisyConv2D(8, 3, strides=2, padding="same", noise=noise,
                         kernel_regularizer=penalty, name="conv1")(inputs)
  # Synchronised: each replica would otherwise normalise by the statistics of
  # its own part of the batch, which one device never sees.
  x = keras.layers.BatchNormalization(synchronized=True, name="bn1")(x)
  x = keras.layers.ReLU()(x)
  x = layers.NoisyConv2D(8, 3, strides=2, padding="same", noise=noise,
                         kernel_regularizer=penalty, name="conv2")(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  logits = layers.NoisyDense(3, noise=noise, kernel_regularizer=penalty,
                             name="head")(x)
  return keras.Model(inputs, logits)


def _seeded_kernels(model):
  """Same starting kernels in every process, whatever the strategy."""
  rng = np.random.default_rng(1)
  for layer in model.layers:
    if hasattr(layer, "kernel"):
      shape = layer.kernel.shape
      fan_in = int(np.prod(shape[:-1]))
      layer.kernel.assign(rng.normal(0, np.sqrt(2 / fan_in), shape)
                          .astype(np.float32))


def train(strategy, noisy):
  import tf_keras as keras
  from rsr_tf import data as data_lib
  from rsr_tf import pipelines
  from rsr_tf import pruning
  from rsr_tf import training

  keras.utils.set_random_seed(0)
  images, labels = _images()
  dataset = pipelines.train_pipeline(data_lib.Split(images, labels),
                                    GLOBAL_BATCH, seed=0, augment=True)
  with strategy.scope():
    model = _tiny_model("channel" if noisy else "none", None)
    _seeded_kernels(model)
    model = pruning.prune(model, pruning.polynomial_schedule(
        TARGET_SPARSITY, 0, PRUNE_END_CALL, 2))
    # The trainer's own penalty: each replica computes it in full.
    trainer = training.RSRTrainer(model, eps=8 / 255, step_size=4 / 255,
                                  steps=2, rand_init=noisy, lambda_l1=1e-2,
                                  weight_decay=1e-3)
    trainer.compile(optimizer=training.sgd(0.05, 0.9))
  history = trainer.fit(dataset, epochs=EPOCHS, verbose=0,
                        callbacks=pruning.callbacks()).history
  stripped = pruning.strip(model)
  # Every worker reads the weights: batch-norm statistics are all-reduced.
  weights = stripped.get_weights()
  steps = [int(layer.pruning_step.numpy()) for layer in model.layers
           if hasattr(layer, "pruning_step")]
  # How far apart the replicas' copies of each trained variable drifted.
  spread = 0.0
  for variable in model.trainable_variables:
    copies = [c.numpy() for c in strategy.experimental_local_results(variable)]
    spread = max([spread] + [float(np.abs(c - copies[0]).max()) for c in copies])
  return {
      "weights": weights,
      "sparsity": pruning.measured_sparsity(stripped)["overall"],
      "pruning_steps": steps,
      "replica_spread": spread,
      "replicas": strategy.num_replicas_in_sync,
      "history": history,
  }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--runs", default="default")
  parser.add_argument("--cpus", type=int, default=1)
  args = parser.parse_args()
  if args.cpus > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpus)
  from rsr_tf import distribute
  runs = args.runs.split(",")
  # One strategy object per kind: two MirroredStrategy objects over the same
  # devices would hand out clashing collective keys.
  strategies = {}
  for run in runs:  # multi_worker must come before any other TF work
    name = "mirrored" if run == "mirrored_noisy" else run
    if name not in strategies:
      devices = ([f"/cpu:{i}" for i in range(args.cpus)] if name == "mirrored"
                 else None)
      strategies[name] = distribute.make_strategy(name, devices=devices)
  os.makedirs(args.out, exist_ok=True)
  # Under multi_worker, one-device runs happen on the chief only, after the
  # distributed one: a reference without starting another process.
  chief = all(distribute.is_chief(s) for s in strategies.values())
  for run in runs:
    strategy = strategies["mirrored" if run == "mirrored_noisy" else run]
    if not chief and run != "multi_worker":
      continue
    result = train(strategy, noisy=run == "mirrored_noisy")
    if distribute.is_chief(strategy):
      np.savez(os.path.join(args.out, f"{run}.npz"),
               *result.pop("weights"), summary=json.dumps(result))


if __name__ == "__main__":
  main()
