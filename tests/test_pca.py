"""Streaming PCA (fitted batch by batch) against scikit-learn's PCA on the stacked features, and
the spilled extraction the training loop clusters."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from deepcluster.clustering import cluster_features, cluster_whitened, nmi, pca_whiten
from deepcluster.features import extract_global, extract_whitened
from deepcluster.models import build_backbone
from deepcluster.pca import StreamingPCA
from deepcluster.transforms import extraction_pipeline


def _columns_equal_up_to_sign(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    signs = np.sign((a * b).sum(axis=0))
    np.testing.assert_allclose(a * signs, b, atol=atol)


def test_streaming_pca_equals_batch_pca():
    features = load_digits().data.astype(np.float32)  # 1797 x 64, real data with a skewed spectrum
    pca = StreamingPCA(20)
    for batch in np.array_split(features, 7):  # uneven batches
        pca.update(torch.from_numpy(batch))
    pca.fit()
    streamed = pca.transform(torch.from_numpy(features)).numpy()
    batch = pca_whiten(features, 20)
    _columns_equal_up_to_sign(streamed, batch, atol=2e-3)
    np.testing.assert_allclose(np.cov(streamed, rowvar=False), np.eye(20), atol=1e-4)


def test_streaming_pca_refuses_too_many_components():
    pca = StreamingPCA(10)
    pca.update(torch.randn(5, 8))
    with pytest.raises(ValueError, match="exceeds min"):
        pca.fit()
    with pytest.raises(RuntimeError, match="fit"):
        StreamingPCA(2).transform(torch.zeros(1, 3))


def test_spilled_extraction_clusters_like_the_in_memory_one(tmp_path, fashion_train):
    images = fashion_train.subset(600)
    pipeline = extraction_pipeline(28, in_memory=True)
    dataset = images.with_transform(pipeline.sample)
    torch.manual_seed(0)
    backbone = build_backbone("small-cnn", sobel=True)
    whitened = extract_whitened(backbone, dataset, 32, batch_size=128, progress=False,
                                batch_transform=pipeline.batch, spill_dir=tmp_path)
    assert whitened.shape == (600, 32) and whitened.dtype == np.float32
    features, _ = extract_global(backbone, dataset, 128, progress=False,
                                 batch_transform=pipeline.batch)
    # float64 statistics here, float32 in scikit-learn: the weakest components differ by ~1e-3
    _columns_equal_up_to_sign(whitened, pca_whiten(features, 32), atol=1e-2)
    streamed = cluster_whitened(whitened, 10, seed=1)
    in_memory = cluster_features(features, 10, 32, seed=1)
    assert nmi(streamed.assignments, in_memory.assignments) > 0.99


def test_spilled_extraction_clamps_the_dimension(fashion_train):
    pipeline = extraction_pipeline(28, in_memory=True)
    dataset = fashion_train.subset(20).with_transform(pipeline.sample)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        whitened = extract_whitened(build_backbone("small-cnn", sobel=True), dataset, 64,
                                    progress=False, batch_transform=pipeline.batch)
    assert whitened.shape == (20, 20)
    assert any("exceeds min(N=20" in str(w.message) for w in caught)


def test_spilled_extraction_under_bf16_autocast(fashion_train):
    # The training loop extracts under the training precision; the PCA itself stays in float32/64.
    pipeline = extraction_pipeline(28, in_memory=True)
    dataset = fashion_train.subset(300).with_transform(pipeline.sample)
    torch.manual_seed(0)
    backbone = build_backbone("small-cnn", sobel=True)
    options = dict(batch_size=100, progress=False, batch_transform=pipeline.batch)
    full = extract_whitened(backbone, dataset, 16, **options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = extract_whitened(backbone, dataset, 16, **options)
    assert mixed.dtype == np.float32 and mixed.shape == (300, 16)
    # bf16 features differ from fp32 ones, but the leading components must agree closely
    _columns_equal_up_to_sign(mixed[:, :4], full[:, :4], atol=0.15)


def test_shards_with_different_shifts_combine_exactly():
    # What all_reduce does across processes: each shard's statistics, re-expressed relative to
    # one shift and summed, equal the statistics of the whole data.
    features = torch.from_numpy(load_digits().data.astype(np.float32))
    whole, first, second = StreamingPCA(8), StreamingPCA(8), StreamingPCA(8)
    whole.update(features)
    first.update(features[:900])
    second.update(features[900:])  # another first batch, so another shift
    second.reshift(first.shift)
    first.count += second.count
    first.sum += second.sum
    first.outer += second.outer
    whole.reshift(first.shift)
    # (float32 products summed in float64: agreement to float32 precision)
    torch.testing.assert_close(first.sum, whole.sum, rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(first.outer, whole.outer, rtol=1e-5, atol=1.0)
    np.testing.assert_allclose(first.fit().transform(features).numpy(),
                               whole.fit().transform(features).numpy(), atol=1e-3)
