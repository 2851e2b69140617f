"""Streaming PCA (fitted batch by batch) against scikit-learn's PCA on the stacked features, and
the whitened extraction the training loop clusters: features held in memory or spilled to disk
(float16 or float32), chosen by a memory budget."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

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


def test_whitened_extraction_clusters_like_the_stacked_features(fashion_train):
    images = fashion_train.subset(600)
    pipeline = extraction_pipeline(28, in_memory=True)
    dataset = images.with_transform(pipeline.sample)
    torch.manual_seed(0)
    backbone = build_backbone("small-cnn", sobel=True)
    whitened = extract_whitened(backbone, dataset, 32, batch_size=128, progress=False,
                                batch_transform=pipeline.batch)
    assert whitened.shape == (600, 32) and whitened.dtype == np.float32
    features, _ = extract_global(backbone, dataset, 128, progress=False,
                                 batch_transform=pipeline.batch)
    # float64 statistics here, float32 in scikit-learn: the weakest components differ by ~1e-3
    _columns_equal_up_to_sign(whitened, pca_whiten(features, 32), atol=1e-2)
    streamed = cluster_whitened(whitened, 10, seed=1)
    in_memory = cluster_features(features, 10, 32, seed=1)
    assert nmi(streamed.assignments, in_memory.assignments) > 0.99


@pytest.mark.parametrize("memory_budget", [None, 0])  # held, spilled
def test_whitened_extraction_clamps_the_dimension(fashion_train, memory_budget):
    pipeline = extraction_pipeline(28, in_memory=True)
    dataset = fashion_train.subset(20).with_transform(pipeline.sample)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        whitened = extract_whitened(build_backbone("small-cnn", sobel=True), dataset, 64,
                                    progress=False, batch_transform=pipeline.batch,
                                    memory_budget=memory_budget)
    assert whitened.shape == (20, 20)
    assert any("exceeds min(N=20" in str(w.message) for w in caught)


@pytest.mark.parametrize("memory_budget", [None, 0])  # held, spilled in float16
def test_whitened_extraction_under_bf16_autocast(fashion_train, memory_budget):
    # The training loop extracts under the training precision; the PCA itself stays in float32/64.
    pipeline = extraction_pipeline(28, in_memory=True)
    dataset = fashion_train.subset(300).with_transform(pipeline.sample)
    torch.manual_seed(0)
    backbone = build_backbone("small-cnn", sobel=True)
    options = dict(batch_size=100, progress=False, batch_transform=pipeline.batch,
                   memory_budget=memory_budget)
    full = extract_whitened(backbone, dataset, 16, **options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = extract_whitened(backbone, dataset, 16, **options)
    assert mixed.dtype == np.float32 and mixed.shape == (300, 16)
    # bf16 features differ from fp32 ones, but the leading components must agree closely
    _columns_equal_up_to_sign(mixed[:, :4], full[:, :4], atol=0.15)


def _small_extraction(fashion_train, num: int = 600):
    """A small CNN's features of ``num`` images and the options of their whitened extraction."""
    pipeline = extraction_pipeline(28, in_memory=True)
    dataset = fashion_train.subset(num).with_transform(pipeline.sample)
    torch.manual_seed(0)
    backbone = build_backbone("small-cnn", sobel=True)
    options = dict(batch_size=128, progress=False, batch_transform=pipeline.batch)
    features, _ = extract_global(backbone, dataset, **options)
    return backbone, dataset, options, features


def test_held_features_give_exactly_the_float32_spill(tmp_path, fashion_train):
    # The same float32 numbers, projected in the same chunks: not one bit may differ.
    backbone, dataset, options, _ = _small_extraction(fashion_train)
    held = extract_whitened(backbone, dataset, 32, **options, memory_budget=None)
    spilled = extract_whitened(backbone, dataset, 32, **options, memory_budget=0,
                               spill_dtype="float32", spill_dir=tmp_path)
    np.testing.assert_array_equal(held, spilled)
    # The default budget (2 GiB) holds these 600 x 256 features.
    np.testing.assert_array_equal(extract_whitened(backbone, dataset, 32, **options), held)


def test_spill_is_read_back_over_several_chunks(tmp_path):
    # D = 1024: 16 MiB chunks of 4096 rows, so 8500 rows come back in 4096 + 4096 + 308.
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(8500, 8, generator=generator) @ torch.randn(8, 1024, generator=generator)
    dataset = TensorDataset(points + 0.1 * torch.randn(8500, 1024, generator=generator),
                            torch.zeros(8500))
    options = dict(batch_size=1000, progress=False, spill_dir=tmp_path)
    held = extract_whitened(nn.Identity(), dataset, 8, **options, memory_budget=None)
    spilled = extract_whitened(nn.Identity(), dataset, 8, **options, memory_budget=0,
                               spill_dtype="float32")
    np.testing.assert_array_equal(held, spilled)
    half = extract_whitened(nn.Identity(), dataset, 8, **options, memory_budget=0)
    # 8 strong components, each a sum over 1024 features: their float16 roundings (2^-11 of
    # each, of random signs) mostly cancel, to ~1e-4 of a unit variance here.
    np.testing.assert_allclose(half, held, atol=1e-3)
    assert not np.array_equal(half, held)


def test_float16_spill_is_within_float16_rounding_of_the_held_features(tmp_path, fashion_train):
    backbone, dataset, options, features = _small_extraction(fashion_train)
    held = extract_whitened(backbone, dataset, 32, **options, memory_budget=None)
    half = extract_whitened(backbone, dataset, 32, **options, memory_budget=0,
                            spill_dir=tmp_path)
    # The PCA is fitted on the float32 features, as when they are held; only the projected
    # copy is rounded to float16: exactly the projection of the rounded features.
    pca = StreamingPCA(32)
    for batch in np.split(features, range(128, len(features), 128)):
        pca.update(torch.from_numpy(batch))
    pca.fit()
    rounded = torch.from_numpy(features.astype(np.float16))
    np.testing.assert_array_equal(half, pca.transform(rounded).numpy())
    # Rounding to float16 moves each feature by at most 2^-11 of itself (2^-25 below float16's
    # normal range, 6.1e-5), so each whitened value moves by at most that through |P|, P the
    # whitening projection; 1.05 covers the float32 rounding of the projection (<= D x 2^-24 =
    # 1.5e-5 relative, 3% of 2^-11 at D = 256). Here the bound is ~3e-3 on the leading component
    # (unit variance) and ~3e-2 on the weakest; the rounding errors, of random signs, use at
    # most 20% of it (the largest difference is 7e-3).
    projection = np.abs((pca.components / pca.variances.sqrt()).numpy())
    bound = 1.05 * (2**-11 * np.abs(features) @ projection + 2**-25 * projection.sum(axis=0))
    assert np.all(np.abs(half - held) <= bound)
    assert np.abs(half - held).max() > 0  # the float16 spill did happen
    # Same seed, same initial centroids: only points within ~1e-2 of a boundary can move at
    # first, and the later iterations move a few more (98% stay here).
    held_ids = cluster_whitened(held, 10, seed=1).assignments
    half_ids = cluster_whitened(half, 10, seed=1).assignments
    assert (held_ids == half_ids).mean() > 0.9 and nmi(held_ids, half_ids) > 0.9


def test_memory_budget_chooses_between_holding_and_spilling(fashion_train):
    backbone, dataset, options, features = _small_extraction(fashion_train, 300)
    held = extract_whitened(backbone, dataset, 16, **options, memory_budget=None)
    spilled = extract_whitened(backbone, dataset, 16, **options, memory_budget=0)
    assert not np.array_equal(held, spilled)  # float16: told apart by their results
    full_bytes = features.size * 4  # N x D x 4
    np.testing.assert_array_equal(
        extract_whitened(backbone, dataset, 16, **options, memory_budget=full_bytes), held)
    np.testing.assert_array_equal(
        extract_whitened(backbone, dataset, 16, **options, memory_budget=full_bytes - 1), spilled)
    with pytest.raises(ValueError, match="spill_dtype"):
        extract_whitened(backbone, dataset, 16, **options, spill_dtype="bfloat16")


def test_float16_spill_refuses_features_beyond_its_range():
    # 70,000 rounds to infinity in float16: a clear error rather than NaN projections.
    dataset = TensorDataset(torch.full((8, 4), 7e4) + torch.randn(8, 4), torch.zeros(8))
    options = dict(batch_size=4, progress=False)
    with pytest.raises(OverflowError, match="float16"):
        extract_whitened(nn.Identity(), dataset, 2, **options, memory_budget=0)
    for budget, spill_dtype in ((None, "float16"), (0, "float32")):
        whitened = extract_whitened(nn.Identity(), dataset, 2, **options, memory_budget=budget,
                                    spill_dtype=spill_dtype)
        assert np.isfinite(whitened).all()


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
