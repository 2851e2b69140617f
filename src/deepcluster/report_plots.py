"""The report's plots (matplotlib, drawn off-screen into PNGs): the per-epoch curves of a run's
history and the cluster-size distributions. matplotlib is imported when a plot is drawn, so the
training code never loads it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# (file stem, title, y label, columns with their legend names)
CURVES = (
    ("loss", "Training loss", "cross-entropy", {"loss": "loss"}),
    ("nmi", "NMI", "NMI", {"nmi_previous": "with the previous clustering",
                           "nmi_labels": "with the labels"}),
    ("knn", "Online k-NN top-1", "top-1 %", {"knn_top1": "weighted k-NN, test split"}),
    ("clusters", "Cluster sizes", "images", {"empty_clusters": "empty clusters",
                                             "smallest_cluster": "smallest cluster",
                                             "largest_cluster": "largest cluster"}),
)
PHASES = {"extract_s": "extraction", "cluster_s": "clustering", "knn_s": "k-NN",
          "train_s": "training pass"}
SIZE = (5.0, 3.2)
DPI = 80


def _figure(title: str):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=11)
    axes.grid(alpha=0.3)
    return figure, axes


def _save(figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)


def column(rows: Sequence[dict[str, Any]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of the rows where ``name`` is a finite number."""
    points = [(row["epoch"], float(row[name])) for row in rows
              if isinstance(row.get(name), (int, float)) and math.isfinite(float(row[name]))]
    if not points:
        return np.empty(0), np.empty(0)
    epochs, values = zip(*points)
    return np.asarray(epochs), np.asarray(values)


def curve_figures(rows: Sequence[dict[str, Any]], folder: Path, prefix: str = "curves/"
                  ) -> list[tuple[str, str]]:
    """One PNG per curve of ``CURVES`` that the rows have, and the seconds per phase; returns
    (title, file relative to ``folder``) pairs."""
    drawn = []
    for stem, title, ylabel, columns in CURVES:
        series = {label: column(rows, name) for name, label in columns.items()}
        series = {label: xy for label, xy in series.items() if len(xy[0])}
        if not series:
            continue
        figure, axes = _figure(title)
        for label, (epochs, values) in series.items():
            axes.plot(epochs, values, marker="o", markersize=4, label=label)
        axes.set_xlabel("epoch (0: the untrained network)")
        axes.set_ylabel(ylabel)
        _integer_epochs(axes)
        if stem == "clusters":  # from 0 empty clusters to the largest cluster's thousands
            axes.set_yscale("symlog", linthresh=1.0)
        if len(series) > 1:
            axes.legend(fontsize=8)
        _save(figure, folder / f"{prefix}{stem}.png")
        drawn.append((title, f"{prefix}{stem}.png"))
    if _phase_figure(rows, folder / f"{prefix}seconds.png"):
        drawn.append(("Seconds per phase", f"{prefix}seconds.png"))
    return drawn


def _phase_figure(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """Stacked bars of each epoch's seconds per phase (False: the rows have none)."""
    epochs = [row["epoch"] for row in rows]
    phases = {label: [_number(row.get(name)) for row in rows]
              for name, label in PHASES.items() if any(name in row for row in rows)}
    if not phases or not epochs:
        return False
    figure, axes = _figure("Seconds per phase")
    bottom = np.zeros(len(epochs))
    for label, seconds in phases.items():
        axes.bar(epochs, seconds, bottom=bottom, label=label)
        bottom += np.asarray(seconds)
    axes.set_xlabel("epoch")
    axes.set_ylabel("seconds")
    _integer_epochs(axes)
    axes.legend(fontsize=8)
    _save(figure, path)
    return True


def _integer_epochs(axes) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def sizes_figure(sizes: dict[str, np.ndarray], path: Path, title: str) -> str:
    """The cluster sizes of each clustering in ``sizes`` (legend name -> sizes), sorted largest
    first on a log scale, with the size of a uniform clustering; returns the figure's caption."""
    figure, axes = _figure(title)
    for label, values in sizes.items():
        ordered = np.sort(np.asarray(values))[::-1]
        axes.plot(np.arange(1, len(ordered) + 1), np.maximum(ordered, 0.8), label=label)
    first = np.asarray(next(iter(sizes.values())))
    axes.axhline(first.sum() / len(first), color="grey", linestyle="--", linewidth=1,
                 label="uniform")
    axes.set_yscale("log")
    axes.set_xlabel("cluster, largest first")
    axes.set_ylabel("images (empty shown at 0.8)")
    axes.legend(fontsize=8)
    _save(figure, path)
    parts = [f"{label}: largest {int(np.max(v))}, smallest non-empty "
             f"{int(np.min(np.asarray(v)[np.asarray(v) > 0]))}, empty {int((np.asarray(v) == 0).sum())}"
             for label, v in sizes.items()]
    return "; ".join(parts)
