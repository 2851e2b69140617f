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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score

from .distributed import all_gather_sizes, all_reduce_sum, is_distributed, rank_and_world

# faiss subsamples to this many points per centroid unless told otherwise; DeepCluster uses all.
ALL_POINTS_PER_CENTROID = 10_000_000
KMEANS_BACKENDS = ("faiss", "torch")


@dataclass
class ClusteringResult:
    assignments: np.ndarray  # (N,) int64 cluster id of each image
    centroids: np.ndarray  # (k, pca_dim) float32
    inertia: float  # sum of squared distances to the assigned centroid
    seconds: float
    # (N,) each image's squared distance to its centroid, where the step kept the clustered
    # features at hand (v1's one-process clustering); None elsewhere
    distances: np.ndarray | None = None

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


def l2_normalise(x: np.ndarray, eps: float = 1e-10, copy: bool = True) -> np.ndarray:
    """Rows scaled to unit L2 norm; with ``copy=False``, in place (no second N x D array)."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # no N x D temporary, unlike np.linalg.norm
    norms += eps
    out = np.array(x, dtype=np.result_type(x.dtype, np.float32)) if copy else x
    out /= norms[:, None].astype(out.dtype, copy=False)
    return out


def kmeans(x: np.ndarray, k: int, iterations: int = 20, seed: int = 0,
           backend: str = "faiss", distributed: bool | None = None,
           init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """k-means on all points; returns (assignments, centroids, inertia).

    Each point is assigned to its nearest final centroid. ``distributed`` is passed to
    ``torch_kmeans`` (False: cluster ``x`` alone even under torch.distributed). ``init``: the
    k initial centroids (default: each backend draws k distinct points with ``seed``); given the
    same ``init``, both backends run the same Lloyd's iterations.
    """
    if init is not None and np.shape(init) != (k, np.shape(x)[1]):
        raise ValueError(f"init has shape {np.shape(init)}; expected (k, d) = ({k}, {np.shape(x)[1]})")
    if backend == "torch":
        assignments, centroids, inertia = torch_kmeans(
            torch.from_numpy(np.asarray(x, np.float32)), k, iterations, seed,
            distributed=distributed,
            init=None if init is None else torch.from_numpy(np.asarray(init, np.float32)))
        return assignments.numpy(), centroids.numpy(), inertia
    if backend != "faiss":
        raise ValueError(f"k-means backend {backend!r} is not one of {', '.join(KMEANS_BACKENDS)}")
    import faiss  # imported here so that the data and model code load without it

    x = np.ascontiguousarray(x, dtype=np.float32)
    clustering = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, verbose=False,
                              max_points_per_centroid=ALL_POINTS_PER_CENTROID,
                              min_points_per_centroid=1, early_stop_threshold=-1.0)
    clustering.train(x, init_centroids=None if init is None
                     else np.ascontiguousarray(init, dtype=np.float32))
    distances, ids = clustering.index.search(x, 1)
    return ids[:, 0].astype(np.int64), clustering.centroids.copy(), float(distances.sum())


def _matmul_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out = a @ b``. On the CPU the product goes through NumPy's BLAS (OpenBLAS in NumPy's
    wheels), which ran float32 products about 2x faster than torch's own (MKL) on the AMD CPU
    of docs/bench.md; elsewhere it is torch.mm."""
    if out.device.type == "cpu" and out.dtype in (torch.float32, torch.float64):
        np.matmul(a.numpy(), b.numpy(), out=out.numpy())
    else:
        torch.mm(a, b, out=out)


def _argmin_into(out: torch.Tensor, scores: torch.Tensor) -> None:
    """``out = scores.argmin(dim=1)`` (NumPy's vectorised argmin on the CPU: about 5x torch's)."""
    if scores.device.type == "cpu":
        np.argmin(scores.numpy(), axis=1, out=out.numpy())
    else:
        torch.argmin(scores, dim=1, out=out)


@dataclass
class _Assignment:
    """What one pass over the points fills in: the nearest centroid of every point, optionally
    ``||c||^2 - 2 x.c`` for it (the squared distance less ``||x||^2``), and optionally the sum
    of the points of each cluster."""
    ids: torch.Tensor
    best: torch.Tensor | None = None
    sums: torch.Tensor | None = None


def _assign_chunks(x: torch.Tensor, starts: list[int], chunk: int, minus_twice: torch.Tensor,
                   norms: torch.Tensor, out: _Assignment, sums: torch.Tensor | None) -> None:
    """Assign the chunks of ``chunk`` rows of ``x`` that begin at ``starts``: scores by one
    matrix product per chunk into a reused buffer, then the nearest centroid; each chunk is added
    into ``sums`` while it is in cache."""
    buffer = torch.empty(min(chunk, len(x)), minus_twice.shape[1], dtype=x.dtype, device=x.device)
    for start in starts:
        part, rows = x[start:start + chunk], slice(start, start + chunk)
        scores = buffer[:len(part)]
        _matmul_into(scores, part, minus_twice)
        scores.add_(norms)
        _argmin_into(out.ids[rows], scores)
        if out.best is not None:
            out.best[rows] = scores.gather(1, out.ids[rows, None])[:, 0]
        if sums is not None:
            sums.index_add_(0, out.ids[rows], part)


@dataclass
class _Workers:
    """Who runs the chunks: the calling thread alone (``pool`` None), or ``count`` threads."""
    pool: ThreadPoolExecutor | None = None
    count: int = 1

    def run(self, function: Callable, jobs: list) -> None:
        list(map(function, jobs) if self.pool is None else self.pool.map(function, jobs))


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int, workers: _Workers,
             with_sums: bool = False, with_best: bool = False,
             spherical: bool = False) -> _Assignment:
    """Nearest centroid of every row of ``x`` (``spherical``: by cosine similarity), by matrix
    products in chunks dealt round-robin to the workers, each with its own score buffer and
    partial sums."""
    if spherical:  # the largest cosine: the smallest -x.c (rows and centroids of unit norm)
        minus_twice = (-centroids).T.contiguous()
        norms = torch.zeros(len(centroids), dtype=centroids.dtype, device=centroids.device)
    else:
        minus_twice = (-2.0 * centroids).T.contiguous()
        norms = (centroids * centroids).sum(dim=1)
    out = _Assignment(torch.empty(len(x), dtype=torch.int64, device=x.device),
                      torch.empty(len(x), dtype=x.dtype, device=x.device) if with_best else None)
    starts = list(range(0, len(x), chunk))
    partial_sums = [torch.zeros_like(centroids) if with_sums else None
                    for _ in range(workers.count)]
    jobs = [(starts[w::workers.count], partial_sums[w]) for w in range(workers.count)]
    workers.run(lambda job: _assign_chunks(x, job[0], chunk, minus_twice, norms, out, job[1]),
                jobs)
    if with_sums:
        out.sums = torch.stack(partial_sums).sum(dim=0)
    return out


def _default_chunk(device: torch.device, k: int) -> int:
    """Rows per matrix product. CPU: 2048 was fastest on the benchmark CPU (a chunk's scores stay
    in cache for the argmin), fewer for large k (at most 64 MiB of scores). GPU: up to 1 GiB of
    scores per product, so that each launch has work enough."""
    if device.type == "cpu":
        return max(256, min(2048, (1 << 24) // k))
    return max(1024, (1 << 28) // k)


@contextmanager
def _cpu_workers(device: torch.device) -> Iterator[_Workers]:
    """On the CPU, a pool of torch.get_num_threads() Python threads with BLAS and torch held to
    one thread each while it lives: each worker runs whole chunks on one core. Letting BLAS's
    and torch's thread pools take turns instead made k-means about 5x slower on 2 cores (each
    pool busy-waits on the cores for a while after its work, starving the other)."""
    if device.type != "cpu":
        yield _Workers()
        return
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
            yield _Workers(pool, threads)
    finally:
        torch.set_num_threads(threads)


def _split_largest(centroids: torch.Tensor, counts: torch.Tensor) -> None:
    """Give each empty cluster half of the largest one: copy its centroid and push the two
    copies apart by a relative 1/1024 in alternating dimensions. faiss does the same, except that
    it splits a cluster drawn at random with probability growing with its size, so the two
    backends part ways at the first empty cluster."""
    eps = 1.0 / 1024.0
    sign = torch.ones(centroids.shape[1], dtype=centroids.dtype, device=centroids.device)
    sign[1::2] = -1.0
    for empty in torch.nonzero(counts == 0).flatten().tolist():
        largest = int(counts.argmax())
        centroids[empty] = centroids[largest] * (1.0 + eps * sign)
        centroids[largest] = centroids[largest] * (1.0 - eps * sign)
        counts[empty] = counts[largest] // 2
        counts[largest] -= counts[empty]


def initial_centroids(x: torch.Tensor, k: int, seed: int = 0,
                      distributed: bool = False) -> torch.Tensor:
    """k distinct points of ``x``, drawn with ``seed``. Under torch.distributed the draw is over the
    concatenation of every process's shard (in rank order), each process fills in the points it
    holds and a sum all-reduce completes them: the same centroids as one process drawing from the
    concatenated data (and not only from rank 0's shard, which may hold only some classes when
    the dataset is sorted by class). Both backends start from these when given the same seed."""
    generator = torch.Generator().manual_seed(seed)
    if not distributed:
        init = torch.randperm(len(x), generator=generator)[:k].to(x.device)
        return x[init].clone()
    rank, _ = rank_and_world()
    sizes = all_gather_sizes(len(x))
    offset = sum(sizes[:rank])
    init = torch.randperm(sum(sizes), generator=generator)[:k]
    mine = (init >= offset) & (init < offset + len(x))
    centroids = torch.zeros(len(init), x.shape[1], dtype=x.dtype, device=x.device)
    centroids[mine.to(x.device)] = x[(init[mine] - offset).to(x.device)]
    all_reduce_sum(centroids)  # exactly one process holds each row; the others add zeros
    return centroids


def torch_kmeans(x: torch.Tensor, k: int, iterations: int = 20, seed: int = 0,
                 chunk: int | None = None, distributed: bool | None = None,
                 init: torch.Tensor | None = None,
                 spherical: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Lloyd's k-means in torch on ``x``'s device; returns (assignments, centroids, inertia).

    ``spherical`` (DeepCluster-v2's prototypes, rows of unit norm): points go to the centroid of
    largest cosine similarity, centroids are the L2-normalised means of their members, a cluster
    that loses all its members keeps its centroid, and the last step is an update, so that the
    returned centroids are exactly the normalised means of the returned clusters (inertia: the
    sum of 1 - cosine).

    Under torch.distributed (``distributed`` None: whenever it is initialised with several
    processes) each process passes its own shard of the points and gets the assignments of its
    own points: the initial centroids are drawn from all the shards as one process would draw
    them from their concatenation, and the per-cluster sums and counts are all-reduced every
    iteration, so every process ends with the same centroids. The collectives need ``x`` on the
    backend's device (the GPU under NCCL). ``init``: the initial centroids (default: see
    ``initial_centroids``).
    """
    if distributed is None:
        distributed = is_distributed()
    chunk = chunk or _default_chunk(x.device, k)
    x = x.contiguous()
    if init is None:
        centroids = initial_centroids(x, k, seed, distributed)
    else:
        centroids = init.to(device=x.device, dtype=x.dtype, copy=True)
    with _cpu_workers(x.device) as workers:
        for _ in range(max(1, iterations) if spherical else iterations):
            step = _nearest(x, centroids, chunk, workers, with_sums=True, with_best=spherical,
                            spherical=spherical)
            counts = torch.bincount(step.ids, minlength=k).to(x.dtype)
            if distributed:
                all_reduce_sum(step.sums)
                all_reduce_sum(counts)
            non_empty = counts > 0
            if spherical:
                centroids[non_empty] = torch.nn.functional.normalize(step.sums[non_empty], dim=1)
            else:
                centroids[non_empty] = step.sums[non_empty] / counts[non_empty, None]
                _split_largest(centroids, counts)
        if spherical:  # the clusters of the last update, whose normalised means are the centroids
            final = step
            inertia = (1.0 + final.best).sum()
        else:
            final = _nearest(x, centroids, chunk, workers, with_best=True)
            inertia = (final.best + (x * x).sum(dim=1)).clamp_min_(0.0).sum()
    if distributed:
        all_reduce_sum(inertia)
    return final.ids, centroids, float(inertia)


def cluster_features(features: np.ndarray, k: int, pca_dim: int = 256, iterations: int = 20,
                     seed: int = 0, backend: str = "faiss",
                     distributed: bool | None = None) -> ClusteringResult:
    """PCA-whiten to ``pca_dim``, L2-normalise, and k-means into ``k`` clusters (``distributed``:
    see ``kmeans``)."""
    start = time.perf_counter()
    pca_dim = check_cluster_params(len(features), features.shape[1], k, pca_dim)
    result = cluster_whitened(pca_whiten(features, pca_dim), k, iterations, seed, backend,
                              distributed, copy=False)
    result.seconds = time.perf_counter() - start
    return result


def cluster_whitened(whitened: np.ndarray, k: int, iterations: int = 20, seed: int = 0,
                     backend: str = "faiss", distributed: bool | None = None,
                     copy: bool = True) -> ClusteringResult:
    """L2-normalise already PCA-whitened features and k-means them into ``k`` clusters
    (``distributed``: see ``kmeans``). ``copy=False`` normalises ``whitened`` in place, so that
    the step holds one N x pca_dim matrix, not two."""
    start = time.perf_counter()
    check_k(len(whitened), k)
    assignments, centroids, inertia = kmeans(l2_normalise(whitened, copy=copy), k, iterations,
                                             seed, backend, distributed)
    return ClusteringResult(assignments, centroids, inertia, time.perf_counter() - start)


def centroid_distances(features: np.ndarray, assignments: np.ndarray,
                       centroids: np.ndarray | None = None, chunk: int = 65536) -> np.ndarray:
    """The squared Euclidean distance (float64) of every row of ``features`` to the centroid of
    its cluster: ``centroids[assignments[i]]``, or where ``centroids`` is None the mean of the
    cluster's rows. Works ``chunk`` rows at a time (no second N x D array)."""
    assignments = np.asarray(assignments, dtype=np.int64)
    if len(features) != len(assignments):
        raise ValueError(f"{len(features)} feature rows but {len(assignments)} cluster ids")
    if centroids is None:
        centroids = cluster_means(features, assignments)
    distances = np.empty(len(features), dtype=np.float64)
    for start in range(0, len(features), chunk):
        rows = np.asarray(features[start:start + chunk], dtype=np.float64)
        difference = rows - centroids[assignments[start:start + chunk]]
        distances[start:start + chunk] = np.einsum("ij,ij->i", difference, difference)
    return distances


def cluster_means(features: np.ndarray, assignments: np.ndarray) -> np.ndarray:
    """The mean row of every cluster (float64, k x D; an empty cluster's is zero)."""
    k = int(assignments.max()) + 1
    sums = np.zeros((k, features.shape[1]), dtype=np.float64)
    np.add.at(sums, assignments, np.asarray(features, dtype=np.float64))
    counts = np.bincount(assignments, minlength=k)
    return sums / np.maximum(counts, 1)[:, None]


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information between two labelings (arithmetic normalisation)."""
    return float(normalized_mutual_info_score(a, b))
