import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits

from deepcluster.clustering import (check_cluster_params, cluster_features, kmeans, l2_normalise,
                                    nmi, pca_whiten)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.data.astype(np.float32), data.target


def test_pca_whitening_gives_identity_covariance(digits):
    features, _ = digits
    whitened = pca_whiten(features, 16)
    assert whitened.shape == (len(features), 16)
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-4)
    covariance = np.cov(whitened, rowvar=False)
    np.testing.assert_allclose(covariance, np.eye(16), atol=1e-3)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_kmeans_assigns_each_point_to_its_nearest_centroid(digits, backend):
    features, _ = digits
    x = l2_normalise(pca_whiten(features, 32))
    assignments, centroids, inertia = kmeans(x, 30, iterations=20, seed=3, backend=backend)
    distances = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(assignments, distances.argmin(axis=1))
    assert inertia == pytest.approx(distances.min(axis=1).sum(), rel=1e-3)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_kmeans_seed_changes_the_result(digits, backend):
    features, _ = digits
    x = l2_normalise(pca_whiten(features, 32))
    a, _, _ = kmeans(x, 30, seed=1, backend=backend)
    b, _, _ = kmeans(x, 30, seed=1, backend=backend)
    c, _, _ = kmeans(x, 30, seed=2, backend=backend)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_clustering_digits_recovers_the_classes(digits):
    features, labels = digits
    result = cluster_features(features, k=10, pca_dim=32, seed=0)
    assert result.sizes.sum() == len(features)
    assert nmi(labels, result.assignments) > 0.6
    shuffled = np.random.default_rng(0).permutation(result.assignments)
    assert nmi(labels, shuffled) < 0.05


def test_more_clusters_than_images_is_a_clear_error():
    with pytest.raises(ValueError, match="k=50 clusters is more than the 20 images"):
        check_cluster_params(num_samples=20, feature_dim=64, k=50, pca_dim=16)


def test_pca_dimension_is_clamped_with_a_warning():
    with pytest.warns(UserWarning, match="PCA dimension 256 exceeds min"):
        assert check_cluster_params(num_samples=40, feature_dim=64, k=10, pca_dim=256) == 40
    features = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = cluster_features(features, k=10, pca_dim=256)
    assert result.centroids.shape == (10, 40)


def test_torch_kmeans_matches_faiss_within_kmeans_variance(digits):
    features, _ = digits
    x = l2_normalise(pca_whiten(features, 32))
    faiss_inertia = [kmeans(x, 50, seed=s, backend="faiss")[2] for s in range(3)]
    torch_inertia = [kmeans(x, 50, seed=s, backend="torch")[2] for s in range(3)]
    spread = max(faiss_inertia) - min(faiss_inertia)
    assert abs(np.mean(torch_inertia) - np.mean(faiss_inertia)) < max(spread, 0.02 * np.mean(faiss_inertia))


def test_empty_clusters_take_half_of_the_largest():
    import torch

    from deepcluster.clustering import _split_largest

    centroids = torch.tensor([[1.0, 2.0], [5.0, 5.0], [9.0, 9.0]])
    counts = torch.tensor([10.0, 0.0, 3.0])
    _split_largest(centroids, counts)
    assert counts.tolist() == [5.0, 5.0, 3.0]
    assert torch.allclose(centroids[1], torch.tensor([1.0 * (1 + 1 / 1024), 2.0 * (1 - 1 / 1024)]))
    assert torch.allclose(centroids[0], torch.tensor([1.0 * (1 - 1 / 1024), 2.0 * (1 + 1 / 1024)]))
    # Many identical points: most initial centroids collide, yet no cluster ends empty.
    from deepcluster.clustering import torch_kmeans

    x = torch.cat([torch.zeros(50, 4), torch.ones(50, 4), torch.randn(20, 4)])
    assignments, _, _ = torch_kmeans(x, 8, iterations=10, seed=0)
    assert torch.bincount(assignments, minlength=8).min() >= 1


def test_both_backends_from_the_same_initial_centroids_give_the_same_clustering(digits):
    import torch

    from deepcluster.clustering import initial_centroids

    features, _ = digits
    x = l2_normalise(pca_whiten(features, 32))
    init = initial_centroids(torch.from_numpy(x), 10, seed=4).numpy()
    by_faiss = kmeans(x, 10, iterations=15, backend="faiss", init=init)
    by_torch = kmeans(x, 10, iterations=15, backend="torch", init=init)
    assert np.bincount(by_torch[0], minlength=10).min() > 0  # no split: the same Lloyd's steps
    np.testing.assert_array_equal(by_torch[0], by_faiss[0])
    np.testing.assert_allclose(by_torch[1], by_faiss[1], atol=1e-5)
    assert by_torch[2] == pytest.approx(by_faiss[2], rel=1e-5)
    with pytest.raises(ValueError, match=r"init has shape \(10, 32\); expected \(k, d\) = \(12, 32\)"):
        kmeans(x, 12, backend="torch", init=init)


def test_torch_kmeans_on_several_cpu_threads_equals_one_thread(digits):
    import torch

    from deepcluster.clustering import torch_kmeans

    features, _ = digits
    x = torch.from_numpy(l2_normalise(pca_whiten(features, 32)))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch_kmeans(x, 40, iterations=10, seed=0, chunk=100)
        torch.set_num_threads(3)  # three workers, each with its own chunks and partial sums
        three = torch_kmeans(x, 40, iterations=10, seed=0, chunk=100)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    torch.testing.assert_close(three[0], one[0], rtol=0, atol=0)
    torch.testing.assert_close(three[1], one[1], rtol=1e-5, atol=1e-6)
    assert three[2] == pytest.approx(one[2], rel=1e-5)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_kmeans_on_the_gpu_equals_the_cpu(digits):
    import torch

    from deepcluster.clustering import torch_kmeans

    features, _ = digits
    x = torch.from_numpy(l2_normalise(pca_whiten(features, 32)))
    on_cpu = torch_kmeans(x, 30, iterations=10, seed=0)
    on_gpu = torch_kmeans(x.cuda(), 30, iterations=10, seed=0)
    assert on_gpu[0].device.type == "cuda"
    assert (on_gpu[0].cpu() != on_cpu[0]).float().mean() < 0.01  # near-ties may flip
    assert on_gpu[2] == pytest.approx(on_cpu[2], rel=1e-3)
