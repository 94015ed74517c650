"""Distribution strategies: a distributed run trains exactly as one device does.

The runs themselves happen in fresh processes (tests/distribute_job.py):
logical CPU devices and multi-worker collectives must be configured before
TensorFlow starts its runtime. Weight noise and PGD's random start are off
in the runs compared weight by weight, because every replica draws its own;
`mirrored_noisy` turns both on and checks only what does not depend on the
draws (finite losses, the pruning target, alphas kept in sync).
"""

import json
import os
import socket
import subprocess
import sys
import types

import numpy as np
import pytest

import rsr_tf  # noqa: F401
import tensorflow as tf

from rsr_tf import config as config_lib
from rsr_tf import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB = os.path.join(ROOT, "tests", "distribute_job.py")
TARGET_SPARSITY = 0.5  # distribute_job.TARGET_SPARSITY
# Summing the same float32 gradients in another order moves weights by a
# few ulps; a lost 1/replicas scaling of the penalty moves them by ~2e-2.
WEIGHT_TOLERANCE = 1e-5


def _job(out, runs, cpus=1, env=None):
  return subprocess.Popen(
      [sys.executable, JOB, f"--out={out}", f"--runs={runs}", f"--cpus={cpus}"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def _finish(process, timeout):
  output, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, output[-3000:]


def _load(path):
  with np.load(path) as npz:
    summary = json.loads(str(npz["summary"]))
    weights = [npz[f"arr_{i}"] for i in range(len(npz.files) - 1)]
  return weights, summary


def _assert_matches_one_device(distributed, single, replicas):
  weights, summary = distributed
  single_weights, single_summary = single
  assert summary["replicas"] == replicas
  assert len(weights) == len(single_weights)
  difference = max(float(np.abs(a - b).max())
                   for a, b in zip(weights, single_weights))
  print(f"max weight difference to one device: {difference:.3g}")
  assert difference < WEIGHT_TOLERANCE
  # Metrics are aggregated over the replicas into global-batch values.
  for key, values in single_summary["history"].items():
    np.testing.assert_allclose(summary["history"][key], values, rtol=1e-5,
                               atol=1e-6, err_msg=key)
  # tfmot counts each training call once, not once per replica.
  assert summary["pruning_steps"] == single_summary["pruning_steps"]
  assert summary["sparsity"] == pytest.approx(TARGET_SPARSITY, abs=1e-3)


def test_mirrored_over_two_cpus_matches_one_device(tmp_path):
  _finish(_job(tmp_path, "default,mirrored,mirrored_noisy", cpus=2), 300)
  single = _load(tmp_path / "default.npz")
  assert single[1]["sparsity"] == pytest.approx(TARGET_SPARSITY, abs=1e-3)
  _assert_matches_one_device(_load(tmp_path / "mirrored.npz"), single, 2)

  _, noisy = _load(tmp_path / "mirrored_noisy.npz")
  assert noisy["replicas"] == 2
  assert np.all(np.isfinite(noisy["history"]["loss"]))
  assert noisy["sparsity"] == pytest.approx(TARGET_SPARSITY, abs=1e-3)
  assert noisy["history"]["mean_alpha"][-1] != pytest.approx(0.25, abs=1e-6)
  # Each replica drew its own noise, yet all hold the same weights and alphas.
  assert noisy["replica_spread"] == 0.0


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def test_two_local_workers_match_one_device(tmp_path):
  cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
  processes = []
  try:
    for index in range(2):
      tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
      env = dict(os.environ, TF_CONFIG=json.dumps(tf_config))
      # The chief also trains on its own afterwards, as the reference.
      processes.append(_job(tmp_path, "multi_worker,default", env=env))
    for process in processes:
      _finish(process, 300)
  finally:
    for process in processes:  # a worker left alone waits for its peer
      if process.poll() is None:
        process.kill()
        process.wait()
  assert sorted(os.listdir(tmp_path)) == ["default.npz", "multi_worker.npz"]
  _assert_matches_one_device(_load(tmp_path / "multi_worker.npz"),
                             _load(tmp_path / "default.npz"), 2)


def _cluster_strategy(task_type, task_id, jobs):
  spec = tf.train.ClusterSpec({job: [f"host{i}:1" for i in range(n)]
                               for job, n in jobs.items()})
  resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
      spec, task_type=task_type, task_id=task_id)
  return types.SimpleNamespace(cluster_resolver=resolver,
                               num_replicas_in_sync=sum(jobs.values()))


@pytest.mark.parametrize("task_type,task_id,jobs,chief", [
    ("worker", 0, {"worker": 2}, True),
    ("worker", 1, {"worker": 2}, False),
    ("chief", 0, {"chief": 1, "worker": 2}, True),
    ("worker", 0, {"chief": 1, "worker": 2}, False),
])
def test_only_the_chief_writes_to_the_output_dir(task_type, task_id, jobs, chief):
  strategy = _cluster_strategy(task_type, task_id, jobs)
  assert distribute.is_chief(strategy) == chief
  where = distribute.output_dir_for(strategy, "/runs/r")
  assert where == ("/runs/r" if chief else f"/runs/r/workers/{task_type}-{task_id}")
  assert distribute.is_chief(tf.distribute.get_strategy())


def test_strategy_settings_are_checked_and_do_not_block_a_resume():
  with pytest.raises(config_lib.ConfigError, match="--strategy must be one of"):
    config_lib.TrainConfig(strategy="gpu").validate()
  with pytest.raises(config_lib.ConfigError, match="needs --strategy=tpu"):
    config_lib.TrainConfig(tpu="grpc://10.0.0.2:8470").validate()
  saved = json.loads(config_lib.TrainConfig(strategy="mirrored").to_json())
  assert config_lib.TrainConfig().same_training_as(saved)
  del saved["strategy"], saved["tpu"]  # written before the field existed
  assert config_lib.TrainConfig().same_training_as(saved)
  saved["seed"] = 1
  assert not config_lib.TrainConfig().same_training_as(saved)


def test_an_unreachable_tpu_is_one_line(tmp_path):
  (port,) = _free_ports(1)  # nothing listens there
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "train.py"),
       "--embedded_sample", "--strategy=tpu", f"--tpu=grpc://127.0.0.1:{port}",
       f"--output_dir={tmp_path}"],
      capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "does not answer" in lines[0], result.stderr[-2000:]
