"""Uniform sampling over clusters, so that large clusters do not dominate an epoch."""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


def uniform_cluster_indices(assignments: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """Draw the same number of images from every non-empty cluster, shuffled, cut or padded to
    ``num_samples``.

    Each of the C non-empty clusters gives ``N // C + 1`` images (N images in all), drawn without
    replacement when it is large enough and with replacement otherwise, as in the original
    DeepCluster sampler. An epoch longer than that draw (``num_samples`` > N, e.g. rounded up to a
    multiple of the number of processes) is padded with randomly repeated drawn images.
    """
    rng = np.random.default_rng(seed)
    clusters = [np.flatnonzero(assignments == c) for c in np.unique(assignments)]
    per_cluster = len(assignments) // len(clusters) + 1
    drawn = np.concatenate([
        rng.choice(members, per_cluster, replace=len(members) < per_cluster) for members in clusters
    ])
    rng.shuffle(drawn)
    if len(drawn) < num_samples:
        drawn = np.concatenate([drawn, rng.choice(drawn, num_samples - len(drawn))])
    return drawn[:num_samples]


class UniformClusterSampler(Sampler[int]):
    """A torch Sampler over ``uniform_cluster_indices``; one instance per epoch."""

    def __init__(self, assignments: np.ndarray, num_samples: int | None = None, seed: int = 0):
        self.indices = uniform_cluster_indices(
            assignments, len(assignments) if num_samples is None else num_samples, seed)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices.tolist())

    def __len__(self) -> int:
        return len(self.indices)
