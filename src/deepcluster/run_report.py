"""The run report (``deepcluster report RUN_DIR``): one HTML page with its PNGs that shows what a
pretraining run learned, from its folder alone.

- the per-epoch curves of ``metrics.csv``: loss, NMI with the previous clustering and with the
  labels, the online k-NN, empty / smallest / largest cluster, seconds per phase;
- the cluster-size distribution of the first and the last clustering (``assignments/``);
- image grids of the last clustering's clusters: the largest ones and a few chosen at random,
  each with the images nearest its centroid and random members, and the majority label with its
  share where the data has labels. DeepCluster's centroids live in the PCA-whitened space of the
  clustering pass, which the checkpoint does not keep: the report extracts the training images
  once more with the checkpoint's backbone (one streaming pass, as a clustering step) and ranks
  each cluster's members by their distance to the mean of the cluster there. DeepCluster-v2's
  checkpoint holds its memory bank and prototypes, which are used as they are (no extraction);
- the benchmark results found in the run folder (``results.json`` of k-NN, linear and SVM runs,
  and any folder passed with ``results``) and the run's config.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .checkpoint import backbone_from_checkpoint, load_checkpoint
from .cluster_grids import ClusterCard, cluster_cards
from .clustering import centroid_distances, l2_normalise
from .config import PretrainConfig, load_yaml_config
from .datasets import load_dataset
from .engine.history import format_value, read_metrics_csv
from .explorer import DEFAULT_PCA_DIM, default_device, whitened_features
from .precision import autocast
from .report_page import Figure, Page, Section, Table, write_page
from .report_plots import curve_figures, sizes_figure
from .results import COLUMNS

ALL_EPOCHS = 1 << 30


@dataclass
class RunFolder:
    """What a pretraining run folder holds (anything missing is empty or None)."""

    path: Path
    config: PretrainConfig | None
    config_text: str
    rows: list[dict[str, Any]]
    assignments: dict[int, Path]  # epoch -> assignments/epoch_NNN.npy
    checkpoint: Path | None


def read_run(run_dir: str | Path) -> RunFolder:
    """The run folder ``run_dir``; one that holds neither metrics nor a checkpoint is an error."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist")
    metrics, checkpoint = path / "metrics.csv", path / "checkpoints" / "last.ckpt"
    if not metrics.is_file() and not checkpoint.is_file():
        raise ValueError(f"{path}: not a pretraining run folder (no metrics.csv and no "
                         "checkpoints/last.ckpt)")
    config_file = path / "config.yaml"
    config_text = config_file.read_text() if config_file.is_file() else ""
    config = load_yaml_config(config_file) if config_text else None
    assignments = {int(file.stem.split("_")[1]): file
                   for file in sorted((path / "assignments").glob("epoch_*.npy"))}
    return RunFolder(path, config, config_text, read_metrics_csv(metrics, ALL_EPOCHS),
                     assignments, checkpoint if checkpoint.is_file() else None)


def write_report(run_dir: str | Path, out: str | Path | None = None,
                 results: Sequence[str | Path] = (), grids: bool = True, largest: int = 12,
                 random: int = 4, seed: int = 0, device: torch.device | None = None,
                 progress: bool = True) -> Path:
    """Write the report of ``run_dir`` into ``out`` (default ``run_dir/report``); returns the
    page's path (``index.html``)."""
    run = read_run(run_dir)
    out = Path(out) if out is not None else run.path / "report"
    if (out / "index.html").is_file():  # an earlier report: its PNGs go
        for folder in ("curves", "clusters"):
            shutil.rmtree(out / folder, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    sections = [curves_section(run, out), sizes_section(run, out)]
    if grids:
        sections.append(clusters_section(run, out, largest, random, seed, device, progress))
    found = find_results(run.path, results, skip=out)
    if found:
        sections.append(Section("Benchmarks", "benchmarks", tables=benchmark_tables(found)))
    if run.config_text:
        sections.append(Section("Config", "config", "config.yaml of the run",
                                code=run.config_text))
    title = f"Run report: {run.path.name}"
    page = Page(title, f"{run.path}", run_summary(run),
                [section for section in sections if section is not None])
    return write_page(page, out)


def run_summary(run: RunFolder) -> list[tuple[str, str]]:
    """The page's key facts: recipe, epochs, last figures, time."""
    summary = []
    if run.config is not None:
        config = run.config
        summary += [("method", config.method), ("data", config.data), ("arch", config.arch),
                    ("epochs", f"{run.rows[-1]['epoch'] if run.rows else 0} of {config.epochs}")]
        if config.k is not None:
            summary.append(("k", str(config.k)))
    for name, label in (("nmi_labels", "last NMI with the labels"),
                        ("knn_top1", "last online k-NN top-1 %")):
        values = [row[name] for row in run.rows if _finite(row.get(name))]
        if values:
            summary.append((label, format_value(float(values[-1]))))
    seconds = sum(float(row[name]) for row in run.rows for name in row
                  if name.endswith("_s") and _finite(row[name]))
    if seconds:
        summary.append(("seconds (all phases)", f"{seconds:.0f}"))
    if run.checkpoint is not None:
        summary.append(("checkpoint", str(run.checkpoint)))
    return summary


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def curves_section(run: RunFolder, out: Path) -> Section | None:
    drawn = curve_figures(run.rows, out)
    if not drawn:
        return None
    return Section("Curves", "curves", "One point per epoch of metrics.csv; epoch 0 is the "
                   "clustering of the untrained network.",
                   figures=[Figure(title, file) for title, file in drawn])


def sizes_section(run: RunFolder, out: Path) -> Section | None:
    if not run.assignments:
        return None
    first, last = min(run.assignments), max(run.assignments)
    k = run.config.k if run.config is not None and run.config.k else None
    sizes = {f"epoch {epoch}": np.bincount(np.load(run.assignments[epoch]), minlength=k or 0)
             for epoch in dict.fromkeys((first, last))}
    caption = sizes_figure(sizes, out / "curves" / "cluster_sizes.png",
                           "Cluster sizes, first and last clustering")
    return Section("Cluster sizes", "sizes", figures=[
        Figure("cluster sizes", "curves/cluster_sizes.png", caption)])


def clusters_section(run: RunFolder, out: Path, largest: int, random: int, seed: int,
                     device: torch.device | None, progress: bool) -> Section | None:
    """The image grids of the last clustering (a note instead where they cannot be drawn)."""
    if run.checkpoint is None or run.config is None or not run.assignments:
        return None
    try:
        images, assignments, distances, how = ranked_members(run, device, progress)
    except (ValueError, FileNotFoundError, OSError) as error:
        return Section("Clusters", "clusters", f"No image grids: {error}")
    cards: list[ClusterCard] = cluster_cards(images, assignments, distances, out, "clusters/",
                                             largest=largest, random=random, seed=seed)
    epoch = max(run.assignments)
    text = (f"The last clustering (epoch {epoch}): the {largest} largest clusters, then "
            f"{random} others chosen at random. In each, the images nearest the centroid, then "
            f"random members; {how}.")
    return Section("Clusters", "clusters", text, cards=cards)


def ranked_members(run: RunFolder, device: torch.device | None, progress: bool):
    """(the training images, the last cluster ids, each image's squared distance to its
    centroid, how the distance was measured)."""
    config, state = run.config, load_checkpoint(run.checkpoint)
    images = load_dataset(config.data, "train", skip_unreadable=config.skip_unreadable)
    if config.subset:
        images = images.subset(config.subset)
    if "memory" in state and "prototypes" in state:  # DeepCluster-v2: its own clustering space
        assignments = state["assignments"][0].numpy()
        features = state["memory"][0].float().numpy()
        distances = centroid_distances(features, assignments, state["prototypes"][0].double().numpy())
        how = "distances between the memory bank's embeddings and the prototypes"
    else:
        last = run.assignments[max(run.assignments)]
        assignments = np.load(last).astype(np.int64)
        if len(assignments) != len(images):
            raise ValueError(f"{last} has {len(assignments)} cluster ids but --data "
                             f"{config.data!r} {len(images)} images")
        kept = last.with_name(last.name.replace("epoch_", "distances_"))
        if kept.is_file():
            how = ("distances to the cluster's centroid in the PCA-whitened, L2-normalised "
                   "features that the run clustered")
            return images, assignments, np.load(kept).astype(np.float64), how
        backbone, _ = backbone_from_checkpoint(run.checkpoint)
        device = device or default_device()
        # A mixed-precision run's report extracts in bf16 where this machine computes in it
        # natively (about half the time on such a CPU), else in float32.
        precision = "32-true" if config.precision == "32-true" else "auto"
        with autocast(precision, device):
            features = whitened_features(backbone, images, config.image_size,
                                         config.pca_dim or DEFAULT_PCA_DIM,
                                         config.extract_batch_size or 256, 0, device,
                                         config.feature_memory_gb or 2.0, progress)
        distances = centroid_distances(l2_normalise(features, copy=False), assignments)
        how = ("distances to the cluster's mean in the PCA-whitened, L2-normalised features of "
               "the checkpoint's backbone (extracted again for this report)")
    return images, assignments, distances, how


# ----------------------------------------------------------------------------------------------
# Benchmark results


def find_results(run_dir: Path, extra: Iterable[str | Path] = (), skip: Path | None = None
                 ) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable benchmark ``results.json`` under ``run_dir`` and the ``extra`` files or
    folders (not under ``skip``), in path order."""
    files: list[Path] = sorted(run_dir.rglob("results.json"))
    for path in map(Path, extra):
        if not path.exists():
            raise FileNotFoundError(f"benchmark results {path} not found")
        files += [path] if path.is_file() else sorted(path.rglob("results.json"))
    found, seen = [], set()
    for file in files:
        resolved = file.resolve()
        if resolved in seen or (skip is not None and skip.resolve() in resolved.parents):
            continue
        seen.add(resolved)
        try:
            results = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(results, dict) and "benchmark" in results:
            found.append((file, results))
    return found


def benchmark_tables(found: Sequence[tuple[Path, dict[str, Any]]]) -> list[Table]:
    """One table per k-NN or SVM result, one for all linear results."""
    tables: list[Table] = []
    linear = [(path, results) for path, results in found if results["benchmark"] == "linear"]
    for path, results in found:
        if results["benchmark"] == "knn":
            tables.append(knn_table(path, results))
        elif results["benchmark"] == "voc07-svm" and "table" in results:
            tables.append(svm_table(path, results))
    if linear:
        tables.append(linear_table(linear))
    return tables


def knn_table(path: Path, results: dict[str, Any]) -> Table:
    rows = [[row["features"], str(row["dim"]), f"{row['top1']:.2f}", f"{row['seconds']:.0f}"]
            for row in results.get("rows", [])]
    return Table(f"k-NN (k = {results.get('k')}, T = {results.get('temperature')}) on "
                 f"{results.get('data')} {results.get('split', 'test')}",
                 ["features", "dim", "top-1 %", "seconds"], rows, f"from {path}")


def linear_table(found: Sequence[tuple[Path, dict[str, Any]]]) -> Table:
    heads = [head for head in COLUMNS if any(head in r.get("heads", {}) for _, r in found)]
    rows = []
    for _, results in found:
        cells = [f"{results['heads'][h]['top1']:.2f}" if h in results.get("heads", {}) else "–"
                 for h in heads]
        rows.append([str(results.get("label", "")), str(results.get("data", "")), *cells])
    return Table("Linear probes, top-1 %", ["model", "data", *(COLUMNS[h] for h in heads)], rows,
                 "from " + ", ".join(str(path) for path, _ in found))


def svm_table(path: Path, results: dict[str, Any]) -> Table:
    table = results["table"]

    def cell(value: Any) -> str:
        return "–" if value is None or not _finite(value) else f"{value:.2f}"
    rows = [[str(row.get("features")), str(row.get("lowshot_cost") or "–"),
             str(row.get("best_layer") or "–"), cell(row.get("svm")),
             *(cell(row.get("lowshot", {}).get(str(k), row.get("lowshot", {}).get(k)))
               for k in table.get("ks", []))]
            for row in table.get("rows", [])]
    return Table("VOC07 SVM and low-shot SVM, mAP %", list(table["columns"]), rows, f"from {path}")
