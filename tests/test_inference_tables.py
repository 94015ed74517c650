"""benchmarks/inference.py's tables: speed-ups against the right row, robust accuracy on its own row."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import inference  # noqa: E402


def _row(model, noise, runtime, **ms):
  return dict(model=model, noise=noise, runtime=runtime, kernels="AUTO",
              macs=40e6, parameters=1000, sparsity=0.0, gzip_bytes=2048,
              clean=0.5, pgd=0.2, **ms)


def test_speedups_are_against_the_first_tflite_row_of_each_column():
  rows = [_row("dense", "off", "keras", ms_b1=9.0),
          _row("dense", "off", "tflite_float", ms_b1_t1=2.0),
          _row("narrow", "off", "tflite_float", ms_b1_t1=0.5)]
  lines = inference.latency_table(rows, [1], [1]).splitlines()
  assert "| 9.00 |" in lines[2]  # Keras: its own figure, no speed-up
  assert "2.00 (1.00x)" in lines[3]
  assert "0.50 (4.00x)" in lines[4]  # 2.0 / 0.5, not 9.0 / 0.5


def test_robust_accuracy_is_shown_only_on_the_row_it_was_measured_for():
  rows = [_row("noisy", "on", "keras"), _row("noisy", "on", "tflite_int8"),
          _row("noisy", "off", "keras"), _row("plain", "off", "keras")]
  table = inference.accuracy_table(rows, {"noisy": "12.3 ± 0.3", "plain": "19.2 ± 0.0"},
                                   noisy_models={"noisy"})
  cells = [line.split(" | ")[-1] for line in table.splitlines()[2:]]
  assert cells == ["12.3 ± 0.3 |", "— |", "— |", "19.2 ± 0.0 |"]
