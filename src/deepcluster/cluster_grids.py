"""Clusters as image grids: every image's rank in its cluster by distance to the centroid
(``clustering.centroid_distances``), the clusters worth showing (the largest, and a few chosen
at random), and for each one a strip of the images nearest its centroid and a strip of random
members, with the majority label and its share where the images have labels. Shared by the
run report (``run_report``) and the cluster explorer (``explorer``); the PNGs are drawn with PIL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

THUMB = 64  # pixels per thumbnail side
GAP = 2


@dataclass
class ClusterCard:
    """One cluster of the page: its PNGs are relative to the page's folder."""

    cluster: int
    size: int
    chosen: str  # "largest" or "random"
    nearest: str  # PNG of the images nearest the centroid
    members: str | None  # PNG of random members (None: the nearest are all of them)
    majority: str | None = None  # the most frequent label's name
    share: float | None = None  # its share of the cluster, in [0, 1]


def ranks_in_clusters(assignments: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Every image's rank in its cluster by distance to the centroid: 1 for the nearest (ties
    by image index)."""
    order = np.lexsort((np.arange(len(assignments)), distances, assignments))
    sorted_ids = assignments[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order)) - first + 1
    return ranks


def choose_clusters(sizes: np.ndarray, largest: int, random: int, seed: int = 0
                    ) -> list[tuple[int, str]]:
    """The ``largest`` biggest non-empty clusters, then ``random`` others drawn from the rest."""
    by_size = [int(c) for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
    chosen = [(c, "largest") for c in by_size[:largest]]
    rest = by_size[largest:]
    drawn = np.random.default_rng(seed).choice(len(rest), min(random, len(rest)), replace=False)
    return chosen + [(rest[i], "random") for i in sorted(drawn)]


def thumbnail(image: Image.Image, size: int = THUMB) -> Image.Image:
    """A square RGB thumbnail: small images scaled up without blurring, large ones centre-cropped."""
    image = image.convert("RGB")
    if max(image.size) <= size // 2:
        return image.resize((size, size), Image.NEAREST)
    return ImageOps.fit(image, (size, size), Image.BILINEAR)


def strip(images: Sequence[Image.Image], size: int = THUMB) -> Image.Image:
    """Thumbnails side by side on a white background."""
    width = max(1, len(images)) * (size + GAP) - GAP
    canvas = Image.new("RGB", (width, size), "white")
    for position, image in enumerate(images):
        canvas.paste(thumbnail(image, size), (position * (size + GAP), 0))
    return canvas


def majority_label(labels: np.ndarray | None, members: np.ndarray,
                   classes: Sequence[str]) -> tuple[str | None, float | None]:
    """The most frequent label among ``members`` (its class name where known) and its share."""
    if labels is None or len(members) == 0:
        return None, None
    values, counts = np.unique(labels[members], return_counts=True)
    if values[counts.argmax()] < 0:  # -1: unlabelled
        return None, None
    label = int(values[counts.argmax()])
    name = classes[label] if label < len(classes) else str(label)
    return name, float(counts.max() / len(members))


def cluster_cards(images, assignments: np.ndarray, distances: np.ndarray, folder: Path,
                  prefix: str = "clusters/", largest: int = 12, random: int = 4,
                  nearest: int = 8, members: int = 4, seed: int = 0) -> list[ClusterCard]:
    """The cards of the chosen clusters, their PNGs written into ``folder / prefix``.

    ``images[i]`` is ``(PIL image, label)`` (a dataset with no transform); labels come from
    ``images.targets`` and names from ``images.classes`` where it has them."""
    assignments = np.asarray(assignments, dtype=np.int64)
    sizes = np.bincount(assignments)
    labels = getattr(images, "targets", None)
    classes = list(getattr(images, "classes", []) or [])
    (folder / prefix).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = np.lexsort((np.arange(len(assignments)), distances, assignments))
    starts = np.r_[0, np.cumsum(sizes)]
    cards = []
    for cluster, chosen in choose_clusters(sizes, largest, random, seed):
        in_cluster = order[starts[cluster]:starts[cluster + 1]]  # nearest first
        closest = in_cluster[:nearest]
        others = in_cluster[nearest:]
        drawn = np.sort(rng.choice(others, min(members, len(others)), replace=False))
        names: dict[str, str | None] = {"members": None}
        for kind, chosen_images in (("nearest", closest), ("members", drawn)):
            if len(chosen_images) == 0:
                continue
            name = f"{prefix}cluster_{cluster:05d}_{kind}.png"
            strip([images[int(i)][0] for i in chosen_images]).save(folder / name)
            names[kind] = name
        majority, share = majority_label(labels, in_cluster, classes)
        cards.append(ClusterCard(cluster, int(sizes[cluster]), chosen, names["nearest"],
                                 names["members"], majority, share))
    return cards
