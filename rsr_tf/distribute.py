"""tf.distribute strategies by name, and who writes a multi-worker run's files."""

import os
import socket
import urllib.parse

import rsr_tf  # noqa: F401
import tensorflow as tf

from rsr_tf.config import STRATEGIES


class StrategyError(ValueError):
  """The strategy cannot be set up; the message is one line for the user."""


def make_strategy(name, tpu=None, devices=None):
  """Builds the `tf.distribute.Strategy` that `--strategy` names.

  Call it before any other TensorFlow work: the multi-worker and TPU
  strategies configure the runtime and refuse an initialised one.

  Args:
    name: one of `STRATEGIES`. "default" is the single-device strategy;
      "mirrored" replicates over the local GPUs (or the CPU when there are
      none); "multi_worker" also spans the hosts that the TF_CONFIG
      environment variable lists, which the strategy reads itself; "tpu"
      connects to the TPU at `tpu`.
    tpu: TPU name or grpc:// address for "tpu"; None or "" lets the resolver
      find the local TPU (a Cloud TPU VM).
    devices: for "mirrored", the devices to replicate over instead of every
      GPU (e.g. logical CPUs in a test).
  """
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy(devices)
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    _check_reachable(tpu)
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
      tf.config.experimental_connect_to_cluster(resolver)
      tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as e:
      detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
      raise StrategyError(f"--strategy=tpu: no TPU at {tpu or 'the local host'} "
                          f"({type(e).__name__}: {detail})") from e
    return tf.distribute.TPUStrategy(resolver)
  raise StrategyError(f"--strategy must be one of {', '.join(STRATEGIES)}, "
                      f"got {name!r}")


def _check_reachable(tpu, timeout_s=10.0):
  """Fails fast on a grpc:// TPU address that does not answer.

  TensorFlow would otherwise wait for it without end.
  """
  if not tpu or not tpu.startswith("grpc://"):
    return
  address = urllib.parse.urlparse(tpu)
  try:
    with socket.create_connection((address.hostname, address.port or 8470),
                                  timeout=timeout_s):
      pass
  except (OSError, ValueError) as e:
    raise StrategyError(f"--tpu={tpu} does not answer ({e}); check the "
                        "address and that the TPU is up") from e


def _task(strategy):
  """(task_type, task_id, has_chief_job) of a multi-worker run, else None.

  Strategies that span no cluster (default, mirrored) have no resolver, and
  a multi-worker strategy without TF_CONFIG has one without a task.
  """
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return None
  jobs = resolver.cluster_spec().as_dict()
  return resolver.task_type, int(resolver.task_id or 0), "chief" in jobs


def is_chief(strategy):
  """Whether this process writes the run's outputs.

  The chief is the `chief` task if TF_CONFIG has one, else worker 0; every
  single-process strategy is its own chief.
  """
  task = _task(strategy)
  if task is None:
    return True
  task_type, task_id, has_chief = task
  return task_type == "chief" or (not has_chief and task_type == "worker"
                                  and task_id == 0)


def output_dir_for(strategy, output_dir):
  """Where this process writes: `output_dir` for the chief.

  Every worker saves checkpoints (saving reads batch-norm statistics through
  a collective all-reduce, so all must take part) and restores its own on a
  rerun; the other workers keep theirs in `output_dir/workers/<task>` so
  they never overwrite the chief's files, shared storage or not.
  """
  if is_chief(strategy):
    return output_dir
  task_type, task_id, _ = _task(strategy)
  return os.path.join(output_dir, "workers", f"{task_type}-{task_id}")


def describe(strategy):
  """Replica count and, in a cluster, which task this process is."""
  task = _task(strategy)
  where = f", this process is {task[0]} {task[1]}" if task else ""
  return f"{strategy.num_replicas_in_sync} replica(s) in sync{where}"
