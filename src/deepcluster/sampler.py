"""Uniform sampling over clusters, so that large clusters do not dominate an epoch."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
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
    # The members of each cluster in increasing index order, clusters by increasing id: one stable
    # sort, O(N log N) (a scan per cluster, O(N k), took 5.6 s at N = 1.28M, k = 10,000).
    order = np.argsort(assignments, kind="stable")
    _, starts = np.unique(assignments[order], return_index=True)
    clusters = np.split(order, starts[1:])
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


def padded_length(num_samples: int, world_size: int) -> int:
    """``num_samples`` rounded up to a multiple of ``world_size``."""
    return -(-num_samples // world_size) * world_size


def distributed_uniform_cluster_indices(assignments: np.ndarray, seed: int, rank: int,
                                        world_size: int) -> np.ndarray:
    """This process's share of an epoch of ``uniform_cluster_indices``.

    Every process draws the same global list (same seed) of N images, padded to a multiple of
    ``world_size`` (with one process: the single-process draw itself), and takes every
    ``world_size``-th element starting at its rank (interleaved, as torch's DistributedSampler).
    With a per-process batch of B, local batch s of every rank then holds global positions
    ``[s * B * W, (s + 1) * B * W)``: the union over the ranks of one step is exactly the batch of
    B * W that one process would see, and every rank has the same number of samples and steps
    (the last batches included), which is what DDP's gradient averaging needs to equal the
    gradient of the whole batch.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    drawn = uniform_cluster_indices(assignments, padded_length(len(assignments), world_size), seed)
    return drawn[rank::world_size]


class DistributedUniformClusterSampler(Sampler[int]):
    """``UniformClusterSampler`` for one of ``world_size`` processes (one instance per epoch):
    see ``distributed_uniform_cluster_indices``. With ``world_size=1`` it is the plain sampler."""

    def __init__(self, assignments: np.ndarray, rank: int, world_size: int, seed: int = 0):
        self.indices = distributed_uniform_cluster_indices(assignments, seed, rank, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices.tolist())

    def __len__(self) -> int:
        return len(self.indices)


def shuffled_order(num_samples: int, seed: int, world_size: int = 1) -> list[int]:
    """One epoch's shuffled order of ``num_samples`` images: the permutation one process draws
    with ``seed`` (what a shuffling DataLoader with that generator yields), padded by repeats to
    a multiple of ``world_size``. Process r takes ``order[r::world_size]`` (interleaved, as above:
    one step's local batches together are the batch one process takes)."""
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    padding = padded_length(num_samples, world_size) - num_samples
    return torch.cat([order, order[:padding]]).tolist()
