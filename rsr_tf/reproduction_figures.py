"""The reproduction report's figures: which runs go into which plot.

rsr_tf.plotting draws; this module picks the points from the collected runs
and names the files, so plotting stays free of the reproduction's variants.
"""

import os

from rsr_tf.reproduction import HEADER
from rsr_tf.reproduction import HEADLINE
from rsr_tf.reproduction import VARIANTS
from rsr_tf.reproduction import accuracy
from rsr_tf.reproduction import sparsity

def write_figures(runs, results_dir, suffix, attacks):
  """Writes the figures there is data for into `results_dir`.

  Args:
    runs: rsr_tf.reproduction.load_runs's runs.
    results_dir: where the figures go.
    suffix: the budget's ending of every file name ("" for cpu; see
      rsr_tf.reproduction_md.output_names).
    attacks: the attacks the headline combines.

  Returns:
    The file names written, in the order the document shows them.
  """
  from rsr_tf import plotting  # noqa: E402  (matplotlib only when needed)
  written = []
  panels = {}
  for attack in ("clean", "pgd", HEADLINE):
    series = {}
    for name, _ in VARIANTS:
      if name == "natural":
        continue
      points = [(sparsity(r), accuracy(r, attack, attacks)) for r in runs[name]]
      points = [p for p in points if p[0] is not None and p[1] is not None]
      label = "RSR" if name.startswith("rsr") else name
      series.setdefault(label, []).extend(points)
    series = {k: v for k, v in series.items() if v}
    if series:
      panels[HEADER[attack]] = series
  if panels:
    path = os.path.join(results_dir, f"accuracy_vs_sparsity{suffix}.png")
    plotting.accuracy_vs_sparsity(panels, path, title="ResNet-20, CIFAR-10 "
                                  "(JPEG copy): accuracy against sparsity")
    written.append(os.path.basename(path))
  curves = {r["name"]: r["eval"]["suite"]["eps_sweep"]
            for seeds in runs.values() for r in seeds
            if r["eval"] and r["eval"]["suite"].get("eps_sweep")}
  if curves:
    path = os.path.join(results_dir, f"accuracy_vs_eps{suffix}.png")
    plotting.compare_accuracy_vs_eps(curves, path, title="PGD-7 accuracy "
                                     "against eps")
    written.append(os.path.basename(path))
  histories = {r["name"]: r["metrics"]["history"]
               for seeds in runs.values() for r in seeds
               if r["metrics"] and "val_pgd_accuracy" in r["metrics"].get("history", {})}
  if histories:
    path = os.path.join(results_dir, f"learning_curves{suffix}.png")
    plotting.learning_curves(histories, path, title="held-out accuracy by epoch")
    written.append(os.path.basename(path))
  return written

