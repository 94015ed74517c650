"""A seeded, op-deterministic tiny run of `experiment.run`; writes its final weights.

Run as `python tests/golden_run.py OUT.npz`. The golden file beside the tests
was written by this script at commit 3b1b81d, before the scripts became thin
clients of `rsr_tf.train_rsr`; `test_api.py` runs it again and compares bit for
bit.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rsr_tf  # noqa: E402,F401
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from rsr_tf import config as config_lib  # noqa: E402
from rsr_tf import experiment  # noqa: E402
from rsr_tf import models  # noqa: E402


def golden_config(output_dir):
  """ResNet-20 on 64 embedded images: clean epoch, PGD epoch, prune, fine-tune."""
  return config_lib.TrainConfig(
      data=config_lib.DataConfig(embedded_sample=True, train_limit=64,
                                 eval_limit=32, batch_size=32),
      model=config_lib.ModelConfig(name="resnet20", noise="channel"),
      attack=config_lib.AttackConfig(steps=2),
      loss=config_lib.LossConfig(adv_delay_epochs=1, lambda_l1=1e-4),
      optimizer=config_lib.OptimizerConfig(learning_rate=0.05, epochs=2,
                                           finetune_epochs=1),
      prune=config_lib.PruneConfig(schedule="oneshot", target_sparsity=0.85),
      output_dir=output_dir, eval_noise_draws=1, seed=3)


def main(path):
  tf.config.experimental.enable_op_determinism()
  with tempfile.TemporaryDirectory() as out:
    experiment.run(golden_config(os.path.join(out, "run")), argv=["golden"])
    model = models.load(os.path.join(out, "run", "model.keras"))
  weights = {f"{i:03d}_{w.name}": w.numpy() for i, w in enumerate(model.weights)}
  np.savez_compressed(path, **weights)


if __name__ == "__main__":
  main(sys.argv[1])
