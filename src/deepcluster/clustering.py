"""The clustering step of DeepCluster: PCA whitening, L2 normalisation, k-means.

``cluster_features`` is the whole step: it takes the N x D features of the training set and returns
one cluster id per image, plus the statistics the training loop logs. PCA is scikit-learn's
(covariance eigendecomposition, whitened to unit variance); k-means is faiss.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score

# faiss subsamples to this many points per centroid unless told otherwise; DeepCluster uses all.
ALL_POINTS_PER_CENTROID = 10_000_000


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


def check_cluster_params(num_samples: int, feature_dim: int, k: int, pca_dim: int) -> int:
    """Validate k and return the PCA dimension to use (clamped, with a warning, when too large)."""
    if k < 2:
        raise ValueError(f"k={k}: DeepCluster needs at least 2 clusters")
    if k > num_samples:
        raise ValueError(f"k={k} clusters is more than the {num_samples} images to cluster; "
                         f"pass --k {num_samples} or fewer")
    limit = min(num_samples, feature_dim)
    if pca_dim > limit:
        warnings.warn(f"PCA dimension {pca_dim} exceeds min(N={num_samples}, D={feature_dim}); "
                      f"using {limit}", stacklevel=2)
        return limit
    return pca_dim


def pca_whiten(features: np.ndarray, dim: int) -> np.ndarray:
    """Project onto the top ``dim`` principal components, whitened to unit variance."""
    pca = PCA(n_components=dim, whiten=True, svd_solver="covariance_eigh")
    return pca.fit_transform(features.astype(np.float32, copy=False)).astype(np.float32)


def l2_normalise(x: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)


def kmeans(x: np.ndarray, k: int, iterations: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """faiss k-means on all points; returns (assignments, centroids, inertia)."""
    import faiss  # imported here so that the data and model code load without it

    x = np.ascontiguousarray(x, dtype=np.float32)
    clustering = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, verbose=False,
                              max_points_per_centroid=ALL_POINTS_PER_CENTROID,
                              min_points_per_centroid=1, early_stop_threshold=-1.0)
    clustering.train(x)
    distances, ids = clustering.index.search(x, 1)
    return ids[:, 0].astype(np.int64), clustering.centroids.copy(), float(distances.sum())


def cluster_features(features: np.ndarray, k: int, pca_dim: int = 256, iterations: int = 20,
                     seed: int = 0) -> ClusteringResult:
    """PCA-whiten to ``pca_dim``, L2-normalise, and k-means into ``k`` clusters."""
    start = time.perf_counter()
    pca_dim = check_cluster_params(len(features), features.shape[1], k, pca_dim)
    reduced = l2_normalise(pca_whiten(features, pca_dim))
    assignments, centroids, inertia = kmeans(reduced, k, iterations, seed)
    return ClusteringResult(assignments, centroids, inertia, time.perf_counter() - start)


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information between two labelings (arithmetic normalisation)."""
    return float(normalized_mutual_info_score(a, b))
