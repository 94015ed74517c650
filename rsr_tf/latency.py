"""Latency: the one way rsr_tf times a model, whatever runs it.

Keras, SavedModel and LiteRT rows of an export, and the demo's timing of the
TensorFlow-free runner, all call `median_ms`, so their numbers compare.
Nothing here imports TensorFlow.
"""

import statistics
import time


def median_ms(fn, batch, runs=50, warmup=3):
  """Median wall time of `fn(batch)` over `runs` calls after `warmup`, in ms.

  Args:
    fn: a callable run on `batch`; its result is ignored.
    batch: what `fn` takes (export times batch-1 inputs [1, H, W, C]).
    runs: timed calls; the median resists the odd slow one (a scheduler
      hiccup, a garbage collection).
    warmup: untimed calls first, so tracing and allocation are not counted.

  Raises:
    ValueError: `runs` < 1 or `warmup` < 0.
  """
  if runs < 1 or warmup < 0:
    raise ValueError(f"median_ms needs runs >= 1 and warmup >= 0, got runs="
                     f"{runs}, warmup={warmup}")
  for _ in range(warmup):
    fn(batch)
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn(batch)
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times)


def interleaved_median_ms(fns, batch, rounds=3, runs=50):
  """{name: median over `rounds` of `median_ms(fn, batch, runs)`}, rounds interleaved.

  Every round times each of `fns` ({name: callable}) once, so a machine
  that gets busier mid-run slows them alike and their ratios still compare.
  """
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      times[name].append(median_ms(fn, batch, runs))
  return {name: statistics.median(ts) for name, ts in times.items()}
