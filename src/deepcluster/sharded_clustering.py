"""DeepCluster's clustering step across processes: each process holds its shard of the extracted
features, and every process must end with the same N assignments."""

from __future__ import annotations

import time

import numpy as np
import torch

from .clustering import (ClusteringResult, cluster_features, cluster_whitened, l2_normalise,
                         torch_kmeans)
from .config import PretrainConfig
from .distributed import (broadcast_from_rank0, broadcast_object, comm_device, gather_rows,
                          rank_and_world)


def cluster_shards(shard: np.ndarray, num: int, config: PretrainConfig, seed: int) -> ClusteringResult:
    """Step 3 across processes, from each process's shard of the features (whitened when
    ``streaming_pca``, else full width); every process gets the same ``ClusteringResult``."""
    start = time.perf_counter()
    if config.streaming_pca and config.kmeans_backend == "torch":
        # Every process clusters its own shard (the sums and counts are all-reduced inside, so
        # every process has the same centroids), then the assignments are all-gathered.
        x = torch.from_numpy(l2_normalise(shard, copy=False)).to(comm_device())
        local, centroids, inertia = torch_kmeans(x, config.k, config.kmeans_iters, seed,
                                                 distributed=True)
        return ClusteringResult(gather_rows(local.cpu().numpy()), centroids.cpu().numpy(),
                                inertia, time.perf_counter() - start)
    # faiss (CPU, one process), or the PCA of full-width features: rank 0 gathers the N rows,
    # clusters them as one process would, and broadcasts the result.
    gathered = gather_rows(shard, dst=0)
    result = None
    if rank_and_world()[0] == 0:
        if config.streaming_pca:
            result = cluster_whitened(gathered, config.k, config.kmeans_iters, seed,
                                      config.kmeans_backend, distributed=False, copy=False)
        else:
            result = cluster_features(gathered, config.k, config.pca_dim, config.kmeans_iters,
                                      seed, config.kmeans_backend, distributed=False)
    del gathered
    result = broadcast_clustering(result, num)
    result.seconds = time.perf_counter() - start
    return result


def broadcast_clustering(result: ClusteringResult | None, num: int) -> ClusteringResult:
    """Rank 0's clustering on every process: the N assignments as one tensor broadcast, the
    centroids and inertia pickled."""
    assignments = torch.empty(num, dtype=torch.int64)
    if result is not None:
        assignments.copy_(torch.from_numpy(result.assignments.astype(np.int64)))
    broadcast_from_rank0([assignments])
    rest = broadcast_object(None if result is None else (result.centroids, result.inertia))
    return ClusteringResult(assignments.numpy(), rest[0], rest[1], 0.0)
