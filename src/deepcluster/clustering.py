"""The clustering step of DeepCluster: PCA whitening, L2 normalisation, k-means.

``cluster_features`` is the whole step: it takes the N x D features of the training set and returns
one cluster id per image, plus the statistics the training loop logs. PCA is scikit-learn's
(covariance eigendecomposition, whitened to unit variance). k-means has two backends: ``faiss``
(CPU, the references' choice) and ``torch`` (Lloyd's iterations as matrix products in chunks, on
whatever device the features are, and across processes when torch.distributed is initialised).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score

# faiss subsamples to this many points per centroid unless told otherwise; DeepCluster uses all.
ALL_POINTS_PER_CENTROID = 10_000_000
KMEANS_BACKENDS = ("faiss", "torch")


@dataclass
class ClusteringResult:
    assignments: np.ndarray  # (N,) int64 cluster id of each image
    centroids: np.ndarray  # (k, pca_dim) float32
    inertia: float  # sum of squared distances to the assigned centroid
    seconds: float

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.assignments, minlength=len(self.centroids))

    @property
    def num_empty(self) -> int:
        return int((self.sizes == 0).sum())


def check_k(num_samples: int, k: int) -> None:
    if k < 2:
        raise ValueError(f"k={k}: DeepCluster needs at least 2 clusters")
    if k > num_samples:
        raise ValueError(f"k={k} clusters is more than the {num_samples} images to cluster; "
                         f"pass --k {num_samples} or fewer")


def pca_dim_for(num_samples: int, feature_dim: int, pca_dim: int) -> int:
    """The PCA dimension to use: ``pca_dim``, clamped with a warning to min(N, D)."""
    limit = min(num_samples, feature_dim)
    if pca_dim > limit:
        warnings.warn(f"PCA dimension {pca_dim} exceeds min(N={num_samples}, D={feature_dim}); "
                      f"using {limit}", stacklevel=2)
        return limit
    return pca_dim


def check_cluster_params(num_samples: int, feature_dim: int, k: int, pca_dim: int) -> int:
    """Validate k and return the PCA dimension to use (clamped, with a warning, when too large)."""
    check_k(num_samples, k)
    return pca_dim_for(num_samples, feature_dim, pca_dim)


def pca_whiten(features: np.ndarray, dim: int) -> np.ndarray:
    """Project onto the top ``dim`` principal components, whitened to unit variance."""
    pca = PCA(n_components=dim, whiten=True, svd_solver="covariance_eigh")
    return pca.fit_transform(features.astype(np.float32, copy=False)).astype(np.float32)


def l2_normalise(x: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)


def kmeans(x: np.ndarray, k: int, iterations: int = 20, seed: int = 0,
           backend: str = "faiss", distributed: bool | None = None
           ) -> tuple[np.ndarray, np.ndarray, float]:
    """k-means on all points; returns (assignments, centroids, inertia).

    Each point is assigned to its nearest final centroid. ``distributed`` is passed to
    ``torch_kmeans`` (False: cluster ``x`` alone even under torch.distributed).
    """
    if backend == "torch":
        assignments, centroids, inertia = torch_kmeans(torch.from_numpy(np.asarray(x, np.float32)),
                                                       k, iterations, seed,
                                                       distributed=distributed)
        return assignments.numpy(), centroids.numpy(), inertia
    if backend != "faiss":
        raise ValueError(f"k-means backend {backend!r} is not one of {', '.join(KMEANS_BACKENDS)}")
    import faiss  # imported here so that the data and model code load without it

    x = np.ascontiguousarray(x, dtype=np.float32)
    clustering = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, verbose=False,
                              max_points_per_centroid=ALL_POINTS_PER_CENTROID,
                              min_points_per_centroid=1, early_stop_threshold=-1.0)
    clustering.train(x)
    distances, ids = clustering.index.search(x, 1)
    return ids[:, 0].astype(np.int64), clustering.centroids.copy(), float(distances.sum())


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid and squared distance of every row, by matrix products in chunks."""
    centroid_norms = (centroids * centroids).sum(dim=1).unsqueeze(0)
    ids, distances = [], []
    for part in x.split(chunk):
        # ||x - c||^2 without the ||x||^2 term, in one fused product: ||c||^2 - 2 x.c
        scores = torch.addmm(centroid_norms, part, centroids.T, alpha=-2.0)
        best, index = scores.min(dim=1)
        ids.append(index)
        distances.append((best + (part * part).sum(dim=1)).clamp_min_(0.0))
    return torch.cat(ids), torch.cat(distances)


def _split_largest(centroids: torch.Tensor, counts: torch.Tensor) -> None:
    """Give each empty cluster half of the largest one, as faiss does: copy its centroid and push
    the two copies apart by a relative 1/1024 in alternating dimensions."""
    eps = 1.0 / 1024.0
    sign = torch.ones(centroids.shape[1], dtype=centroids.dtype, device=centroids.device)
    sign[1::2] = -1.0
    for empty in torch.nonzero(counts == 0).flatten().tolist():
        largest = int(counts.argmax())
        centroids[empty] = centroids[largest] * (1.0 + eps * sign)
        centroids[largest] = centroids[largest] * (1.0 - eps * sign)
        counts[empty] = counts[largest] // 2
        counts[largest] -= counts[empty]


def _initial_centroids(x: torch.Tensor, k: int, generator: torch.Generator,
                       distributed: bool) -> torch.Tensor:
    """k distinct points drawn with ``generator``. Under torch.distributed the draw is over the
    concatenation of every process's shard (in rank order), each process fills in the points it
    holds and a sum all-reduce completes them: the same centroids as one process drawing from the
    concatenated data (and not only from rank 0's shard, which may hold only some classes when
    the dataset is sorted by class)."""
    if not distributed:
        init = torch.randperm(len(x), generator=generator)[:k].to(x.device)
        return x[init].clone()
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(x)], dtype=torch.int64, device=x.device))
    sizes = [int(size.item()) for size in sizes]
    offset = sum(sizes[:rank])
    init = torch.randperm(sum(sizes), generator=generator)[:k]
    mine = (init >= offset) & (init < offset + len(x))
    centroids = torch.zeros(len(init), x.shape[1], dtype=x.dtype, device=x.device)
    centroids[mine.to(x.device)] = x[(init[mine] - offset).to(x.device)]
    dist.all_reduce(centroids)  # exactly one process holds each row; the others add zeros
    return centroids


def torch_kmeans(x: torch.Tensor, k: int, iterations: int = 20, seed: int = 0,
                 chunk: int | None = None, distributed: bool | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Lloyd's k-means in torch on ``x``'s device; returns (assignments, centroids, inertia).

    Under torch.distributed (``distributed`` None: whenever it is initialised with several
    processes) each process passes its own shard of the points and gets the assignments of its
    own points: the initial centroids are drawn from all the shards as one process would draw
    them from their concatenation, and the per-cluster sums and counts are all-reduced every
    iteration, so every process ends with the same centroids. The collectives need ``x`` on the
    backend's device (the GPU under NCCL).
    """
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    chunk = chunk or max(1024, (1 << 24) // k)  # 64 MiB of float32 scores per chunk
    generator = torch.Generator().manual_seed(seed)
    centroids = _initial_centroids(x, k, generator, distributed)
    for _ in range(iterations):
        assignments, _ = _nearest(x, centroids, chunk)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
        counts = torch.bincount(assignments, minlength=k).to(x.dtype)
        if distributed:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        non_empty = counts > 0
        centroids[non_empty] = sums[non_empty] / counts[non_empty, None]
        _split_largest(centroids, counts)
    assignments, distances = _nearest(x, centroids, chunk)
    inertia = distances.sum()
    if distributed:
        dist.all_reduce(inertia)
    return assignments, centroids, float(inertia)


def cluster_features(features: np.ndarray, k: int, pca_dim: int = 256, iterations: int = 20,
                     seed: int = 0, backend: str = "faiss",
                     distributed: bool | None = None) -> ClusteringResult:
    """PCA-whiten to ``pca_dim``, L2-normalise, and k-means into ``k`` clusters (``distributed``:
    see ``kmeans``)."""
    start = time.perf_counter()
    pca_dim = check_cluster_params(len(features), features.shape[1], k, pca_dim)
    result = cluster_whitened(pca_whiten(features, pca_dim), k, iterations, seed, backend,
                              distributed)
    result.seconds = time.perf_counter() - start
    return result


def cluster_whitened(whitened: np.ndarray, k: int, iterations: int = 20, seed: int = 0,
                     backend: str = "faiss", distributed: bool | None = None) -> ClusteringResult:
    """L2-normalise already PCA-whitened features and k-means them into ``k`` clusters
    (``distributed``: see ``kmeans``)."""
    start = time.perf_counter()
    check_k(len(whitened), k)
    assignments, centroids, inertia = kmeans(l2_normalise(whitened), k, iterations, seed, backend,
                                             distributed)
    return ClusteringResult(assignments, centroids, inertia, time.perf_counter() - start)


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information between two labelings (arithmetic normalisation)."""
    return float(normalized_mutual_info_score(a, b))
