"""The cluster explorer (``deepcluster cluster``): sort any image folder into clusters with a
trained network.

The images' global features are extracted with the checkpoint's backbone, PCA-whitened and
L2-normalised in one streaming pass (``features.extract_whitened``, with the memory bound of
pretraining: N x pca_dim in memory, the full-width features held up to ``feature_memory_gb`` and
spilled beyond), then clustered by k-means (``clustering.cluster_whitened``), as in pretraining.
Written to the output folder:

- ``clusters.csv``: one row per image in dataset order: path, cluster, squared distance to the
  cluster's centroid (in the whitened, normalised space that k-means ran in), rank in the cluster
  by that distance (1: the nearest);
- ``clusters/CCC/RRRR_name``: one folder per cluster, a link (or with ``copy``, a copy) of every
  member, the rank first so that a file browser lists the most typical images first;
- ``index.html``: the page of image grids (the largest clusters and a few chosen at random, the
  images nearest each centroid and random members) with the cluster-size curve.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import backbone_from_checkpoint
from .cluster_grids import cluster_cards, ranks_in_clusters
from .clustering import centroid_distances, check_k, cluster_whitened
from .console import progress_bar
from .data import DataError, ImageDataset, ImageFileDataset
from .datasets import load_dataset
from .features import extract_whitened
from .report_page import Figure, Page, Section, write_page
from .report_plots import sizes_figure
from .transforms import extraction_set

DEFAULT_PCA_DIM = 64  # where the checkpoint's method has none (DeepCluster-v2, supervised)


@dataclass
class Explored:
    """What ``explore`` wrote and found."""

    out: Path
    csv: Path
    page: Path
    paths: list[Path]
    assignments: np.ndarray  # (N,) cluster of every image
    distances: np.ndarray  # (N,) squared distance to its centroid
    ranks: np.ndarray  # (N,) 1-based rank in its cluster by distance


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def whitened_features(backbone: nn.Module, images: ImageDataset, image_size: int, pca_dim: int,
                      batch_size: int = 256, workers: int = 0, device: torch.device | None = None,
                      feature_memory_gb: float = 2.0, progress: bool = True) -> np.ndarray:
    """The backbone's global features of ``images``, PCA-whitened to ``pca_dim`` in one streaming
    pass (N x pca_dim float32)."""
    device = device or default_device()
    dataset, batch = extraction_set(images, image_size)
    backbone = backbone.to(device, memory_format=torch.channels_last)
    return extract_whitened(backbone, dataset, pca_dim, batch_size, workers, device, progress,
                            batch_transform=batch.to(device),
                            memory_budget=int(feature_memory_gb * 2**30))


def image_files(data: str, skip_unreadable: bool = False) -> ImageFileDataset:
    """The images of ``data`` (its training split) as files: the explorer links to them."""
    images = load_dataset(data, "train", skip_unreadable=skip_unreadable)
    if not isinstance(images, ImageFileDataset):
        raise DataError(f"--data {data!r} is held in memory, not as image files; the explorer "
                        "needs a folder or a list file of images")
    return images


def explore(checkpoint: str | Path, data: str, k: int, out: str | Path, copy: bool = False,
            pca_dim: int | None = None, iterations: int = 20, seed: int = 0,
            batch_size: int = 256, workers: int = 0, skip_unreadable: bool = False,
            feature_memory_gb: float = 2.0, largest: int = 24, random: int = 4,
            device: torch.device | None = None, progress: bool = True) -> Explored:
    """Cluster the images of ``data`` into ``k`` clusters with ``checkpoint``'s backbone and write
    ``out`` (see the module docstring)."""
    start = time.perf_counter()
    images = image_files(data, skip_unreadable)
    check_k(len(images), k)
    out = prepared_out(Path(out))
    backbone, config = backbone_from_checkpoint(checkpoint)
    pca_dim = pca_dim or config.pca_dim or DEFAULT_PCA_DIM
    features = whitened_features(backbone, images, config.image_size, pca_dim, batch_size, workers,
                                 device, feature_memory_gb, progress)
    clustering = cluster_whitened(features, k, iterations, seed, copy=False)  # normalised in place
    distances = centroid_distances(features, clustering.assignments, clustering.centroids)
    del features
    ranks = ranks_in_clusters(clustering.assignments, distances)
    paths = [Path(p) for p in images.paths]
    csv_path = write_clusters_csv(out / "clusters.csv", paths, clustering.assignments, distances,
                                  ranks)
    write_cluster_folders(out / "clusters", paths, clustering.assignments, ranks, k, copy,
                          progress)
    cards = cluster_cards(images.with_transform(None), clustering.assignments, distances, out,
                          "grids/", largest=largest, random=random, seed=seed)
    sizes = np.bincount(clustering.assignments, minlength=k)
    figure = sizes_figure({"clusters": sizes}, out / "grids" / "sizes.png",
                          "cluster sizes, largest first")
    summary = [("checkpoint", str(checkpoint)), ("data", data), ("images", str(len(images))),
               ("k", str(k)), ("empty clusters", str(int((sizes == 0).sum()))),
               ("PCA dimension", str(clustering.centroids.shape[1])),
               ("seconds", f"{time.perf_counter() - start:.0f}")]
    page = Page(f"Clusters of {data}", "deepcluster cluster: k-means of the network's "
                "PCA-whitened features; every image's cluster, distance and rank are in "
                "clusters.csv, its link in clusters/", summary,
                [Section("Cluster sizes", "sizes", figures=[Figure("cluster sizes",
                                                                   "grids/sizes.png", figure)]),
                 Section("Clusters", "clusters", cards_text(largest, random), cards=cards)])
    page_path = write_page(page, out)
    return Explored(out, csv_path, page_path, paths, clustering.assignments, distances, ranks)


def cards_text(largest: int, random: int) -> str:
    return (f"The {largest} largest clusters, then {random} others chosen at random: in each, "
            "the images nearest the centroid, then random members.")


def prepared_out(out: Path) -> Path:
    """``out``, with the cluster folders and grids of an earlier explorer run in it removed; a
    ``clusters/`` folder that no explorer wrote is an error."""
    if (out / "clusters").exists():
        if not (out / "clusters.csv").is_file():
            raise ValueError(f"{out / 'clusters'} exists and is not an explorer's output; "
                             "choose another --out")
        shutil.rmtree(out / "clusters")
        shutil.rmtree(out / "grids", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_clusters_csv(path: Path, paths: list[Path], assignments: np.ndarray,
                       distances: np.ndarray, ranks: np.ndarray) -> Path:
    """One row per image, in dataset order: path, cluster, distance, rank."""
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "cluster", "distance", "rank"])
        for row in zip(paths, assignments.tolist(), distances.tolist(), ranks.tolist()):
            writer.writerow([str(row[0]), row[1], f"{row[2]:.6g}", row[3]])
    os.replace(temp, path)
    return path


def cluster_folder_names(k: int) -> list[str]:
    width = len(str(k - 1))
    return [f"{cluster:0{width}d}" for cluster in range(k)]


def write_cluster_folders(root: Path, paths: list[Path], assignments: np.ndarray,
                          ranks: np.ndarray, k: int, copy: bool = False,
                          progress: bool = True) -> None:
    """``root/CCC/RRRR_name`` for every image: a symbolic link to it (absolute), or a copy."""
    folders = cluster_folder_names(k)
    for name in folders:
        (root / name).mkdir(parents=True, exist_ok=True)
    width = len(str(int(ranks.max())))
    for index in progress_bar(range(len(paths)), "copy" if copy else "link", enabled=progress):
        source = paths[index].resolve()
        target = root / folders[assignments[index]] / f"{ranks[index]:0{width}d}_{source.name}"
        if copy:
            shutil.copy2(source, target)
        else:
            os.symlink(source, target)
