"""Figures a user would rather look at than read: training curves, robustness plots."""

import matplotlib

matplotlib.use("Agg")  # headless machines, CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from rsr_tf import outputs  # noqa: E402


def _save_atomic(figure, path):
  try:
    with outputs.atomic_path(path) as tmp:
      figure.savefig(tmp, dpi=120, bbox_inches="tight")
  finally:
    plt.close(figure)


def training_curves(history, path, finetune_from=None, title=""):
  """Accuracy (clean, adversarial, held-out), sparsity and mean alpha by epoch.

  Args:
    history: Keras history dict, epochs of every phase concatenated.
    path: the .png to write.
    finetune_from: 1-based epoch where fine-tuning at the target began.
    title: figure title.
  """
  epochs = list(range(1, len(history.get("loss", [])) + 1))
  figure, (acc_ax, sparse_ax) = plt.subplots(1, 2, figsize=(11, 4))
  # Before adversarial training starts there is no PGD accuracy to draw.
  adversarial = [loss > 0 for loss in history.get("adv_loss", [])]
  for key, label in (("clean_accuracy", "train clean"),
                     ("adv_accuracy", "train PGD"),
                     ("val_clean_accuracy", "held-out clean"),
                     ("val_pgd_accuracy", "held-out PGD")):
    if key in history:
      values = [100 * v if (key != "adv_accuracy" or adversarial[i]) else float("nan")
                for i, v in enumerate(history[key])]
      acc_ax.plot(epochs, values, marker="o", label=label)
  acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
  acc_ax.legend()
  if "sparsity" in history:
    sparse_ax.plot(epochs, [100 * v for v in history["sparsity"]], marker="o",
                   color="tab:red", label="sparsity (%)")
  sparse_ax.set(xlabel="epoch", ylabel="sparsity (%)", title="sparsity and noise")
  if "mean_alpha" in history:
    alpha_ax = sparse_ax.twinx()
    alpha_ax.plot(epochs, history["mean_alpha"], marker="s", color="tab:purple",
                  label="mean alpha")
    alpha_ax.set_ylabel("mean alpha")
    alpha_ax.legend(loc="lower right")
  sparse_ax.legend(loc="upper left")
  for ax in (acc_ax, sparse_ax):
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if finetune_from:
      ax.axvline(finetune_from - 0.5, color="grey", linestyle="--")
    ax.grid(alpha=0.3)
  figure.suptitle(title)
  _save_atomic(figure, path)


def _eps_axis(ax, ticks, ylabel, title):
  # symlog keeps eps = 0 (the clean check) on the same axis as 64/255.
  ax.set_xscale("symlog", linthresh=1)
  ax.set(xlabel="eps (/255, symlog scale)", ylabel=ylabel,
         title=title or "accuracy against eps", ylim=(0, 100),
         xlim=(-0.3, max(list(ticks) + [1]) * 1.3))
  ax.set_xticks(sorted(ticks))
  ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
  ax.grid(alpha=0.3)


def accuracy_vs_eps(sweep, path, clean=None, title=""):
  """PGD accuracy against eps (in /255), with the spread over noise draws.

  Args:
    sweep: entries with "eps", "mean", "std" (accuracies in [0, 1]).
    path: the .png to write.
    clean: optional clean-accuracy entry drawn as a reference line.
    title: figure title.
  """
  figure, ax = plt.subplots(figsize=(6, 4))
  eps = [p["eps"] * 255 for p in sweep]
  ax.errorbar(eps, [100 * p["mean"] for p in sweep],
              yerr=[100 * p["std"] for p in sweep], marker="o", capsize=4,
              label=f"PGD-{sweep[0]['steps']}" if sweep else "PGD")
  if clean is not None:
    ax.axhline(100 * clean["mean"], color="grey", linestyle="--",
               label=f"clean {100 * clean['mean']:.1f}%")
  ax.axhline(5, color="tab:red", linestyle=":", label="5% (sanity bound at 64/255)")
  _eps_axis(ax, eps, "accuracy (%)", title)
  ax.legend()
  _save_atomic(figure, path)


def compare_accuracy_vs_eps(curves, path, title=""):
  """PGD accuracy against eps for several models, one line each.

  Args:
    curves: {label: sweep}, each sweep as in `accuracy_vs_eps`.
    path: the .png to write.
    title: figure title.
  """
  figure, ax = plt.subplots(figsize=(7, 4.5))
  ticks = set()
  for label, sweep in curves.items():
    eps = [p["eps"] * 255 for p in sweep]
    ticks.update(eps)
    ax.errorbar(eps, [100 * p["mean"] for p in sweep],
                yerr=[100 * p["std"] for p in sweep], marker="o", capsize=3,
                label=label)
  _eps_axis(ax, ticks, "PGD accuracy (%)", title)
  ax.legend(fontsize=8)
  _save_atomic(figure, path)


def accuracy_vs_sparsity(panels, path, title=""):
  """Accuracy against measured sparsity: one panel per attack, one line per model family.

  Args:
    panels: {panel title: {label: [(sparsity in [0, 1], entry with "mean"
      and "std", and optionally "low", drawn as a marker below)]}}; a label
      keeps its colour across panels.
    path: the .png to write.
    title: figure title.
  """
  figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2),
                              squeeze=False)
  colours = {}
  for ax, (panel, series) in zip(axes[0], panels.items()):
    for label, points in series.items():
      points = sorted(points, key=lambda p: p[0])
      colour = colours.setdefault(label, f"C{len(colours)}")
      ax.errorbar([100 * s for s, _ in points],
                  [100 * e["mean"] for _, e in points],
                  yerr=[100 * e["std"] for _, e in points], capsize=3,
                  marker="o" if len(points) > 1 else "D", color=colour,
                  label=label)
      # Where an entry carries a lower end (a range), it hangs below the point.
      low = [(100 * x, 100 * e["low"], 100 * e["mean"]) for x, e in points
             if e.get("low") is not None and e["low"] < e["mean"] - 1e-9]
      for x, bottom, top in low:
        ax.vlines(x, bottom, top, colors=colour, linestyles=":")
      if low:
        ax.scatter([x for x, _, _ in low], [b for _, b, _ in low], marker="v",
                   color=colour)
    ax.set(xlabel="sparsity of the conv/dense kernels (%)",
           ylabel="accuracy (%)", title=panel, xlim=(-5, 100))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  figure.suptitle(title)
  _save_atomic(figure, path)


def learning_curves(histories, path, title=""):
  """Held-out clean and PGD accuracy by epoch, one colour per run.

  Args:
    histories: {run name: history dict with val_clean_accuracy and
      val_pgd_accuracy per epoch}.
    path: the .png to write.
    title: figure title.
  """
  figure, axes = plt.subplots(1, 2, figsize=(11, 4))
  for i, (name, history) in enumerate(sorted(histories.items())):
    for ax, key in zip(axes, ("val_clean_accuracy", "val_pgd_accuracy")):
      values = history.get(key, [])
      ax.plot(range(1, len(values) + 1), [100 * v for v in values],
              marker=".", color=f"C{i}", label=name)
  for ax, what in zip(axes, ("clean", "PGD")):
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=f"held-out {what}")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  figure.suptitle(title)
  _save_atomic(figure, path)


def sweep(values, series, reference, path, xlabel, title=""):
  """Accuracy against a swept setting, with a reference run as dashed lines.

  Args:
    values: the setting of each point (0 allowed: the axis is symlog).
    series: {label: [accuracy in [0, 1] or None per value]}.
    reference: {label: accuracy of the reference run}, same labels.
    path: the .png to write.
    xlabel, title: axis label and figure title.
  """
  figure, ax = plt.subplots(figsize=(7.5, 4.5))
  positive = [v for v in values if v > 0]
  for i, (label, points) in enumerate(series.items()):
    kept = [(v, 100 * p) for v, p in zip(values, points) if p is not None]
    ax.plot([v for v, _ in kept], [p for _, p in kept], marker="o",
            color=f"C{i}", label=label)
    if reference.get(label) is not None:
      ax.axhline(100 * reference[label], color=f"C{i}", linestyle="--",
                 linewidth=1)
  ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
  ax.set(xlabel=xlabel, ylabel="accuracy (%)", title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, title="dashed: the reference run")
  _save_atomic(figure, path)


def latency_vs_accuracy(points, path, ylabel="accuracy (%)", title=""):
  """Accuracy against batch-1 latency, one labelled point per artifact.

  Args:
    points: [(label, latency in ms, accuracy in [0, 1])].
    path: the .png to write.
    ylabel, title: axis label and figure title.
  """
  figure, ax = plt.subplots(figsize=(8, 5))
  for i, (label, ms, accuracy) in enumerate(points):
    ax.scatter([ms], [100 * accuracy], color=f"C{i % 10}", label=label)
  ax.set_xscale("log")
  ax.set(xlabel="LiteRT latency at batch 1 (ms, log scale)", ylabel=ylabel,
         title=title or "cost against robustness")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  _save_atomic(figure, path)
