"""Feature extraction: run a frozen network over a dataset into one preallocated array.

Under torch.distributed (``shard=True``) each process extracts its own contiguous shard of the
dataset, in dataset order (``distributed.dataset_shard``); ``distributed.gather_rows`` puts the
shards back together.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import IO, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from .clustering import pca_dim_for
from .distributed import dataset_shard
from .models import FEATURE_NAMES, Backbone
from .pca import StreamingPCA
from .console import progress_bar

# The benchmarks' pooling of each ResNet-50 stage at 224 px (MMSelfSup and VISSL agree):
# name -> (spatial size at 224 px, AvgPool2d kernel, stride, padding, pooled grid).
EXACT_POOLING = {
    "feature1": (112, 10, 10, 4, 12),
    "feature2": (56, 16, 8, 0, 6),
    "feature3": (28, 13, 5, 0, 4),
    "feature4": (14, 8, 3, 0, 3),
    "feature5": (7, 6, 1, 0, 2),
}
LAYERS = FEATURE_NAMES + ("avgpool",)


class TransformingCollate:
    """Collate a batch, then apply a batch transform: runs the batched augmentation inside the
    loader's worker processes, in parallel with the model step, when the model is on the CPU."""

    def __init__(self, batch_transform: nn.Module, collate: Callable | None = None):
        self.batch_transform = batch_transform
        self.collate = collate or default_collate

    def __call__(self, samples: list) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = self.collate(samples)
        with torch.no_grad():
            return self.batch_transform(images), targets


def split_batch_transform(batch_transform: nn.Module, workers: int, device: torch.device,
                          collate: Callable | None = None) -> tuple[Callable | None, nn.Module]:
    """Where a batch transform runs: ``(collate_fn, on_device)``. On the CPU with loader workers it
    goes into the workers' collate; otherwise it runs on the device after the batch arrives.
    ``collate``: how samples become a batch (default: torch's default_collate)."""
    if workers > 0 and device.type == "cpu":
        return TransformingCollate(batch_transform, collate), nn.Identity()
    return collate, batch_transform


def make_loader(dataset: Dataset, batch_size: int, workers: int, **kwargs) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                      persistent_workers=False, pin_memory=torch.cuda.is_available(), **kwargs)


def _outputs(fn: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, device: torch.device,
             desc: str, progress: bool):
    """``(fn(batch) as float (B, D), targets)`` for every batch, in dataset order."""
    for images, targets in progress_bar(loader, desc, enabled=progress):
        yield fn(images.to(device, non_blocking=True)).flatten(1).float(), targets


@torch.inference_mode()
def extract(fn: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, device: torch.device,
            desc: str = "extract", progress: bool = True,
            feature_sink: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``fn`` to every batch, in dataset order; return (features float32 N x D, labels N).
    ``feature_sink(features, labels)`` also gets every batch (e.g. the online k-NN)."""
    num = len(loader.dataset)
    features: np.ndarray | None = None
    labels = np.empty(num, dtype=np.int64)
    start = 0
    for out, targets in _outputs(fn, loader, device, desc, progress):
        if features is None:
            features = np.empty((num, out.shape[1]), dtype=np.float32)
        features[start:start + len(out)] = out.cpu().numpy()
        labels[start:start + len(out)] = targets.numpy()
        start += len(out)
        if feature_sink is not None:
            feature_sink(out, targets)
    if features is None:
        raise ValueError("cannot extract features of an empty dataset")
    return features, labels


@contextmanager
def _eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _global_pass(backbone: nn.Module, dataset: Dataset, batch_size: int, workers: int,
                 device: torch.device, batch_transform: nn.Module | None,
                 collate: Callable | None = None) -> tuple[nn.Module, DataLoader]:
    """The function and loader of a pass with the backbone's global feature; the batch transform
    runs in the loader workers (CPU) or on the device (``split_batch_transform``)."""
    collate_fn, on_device = split_batch_transform(batch_transform or nn.Identity(), workers, device,
                                                  collate)
    loader = make_loader(dataset, batch_size, workers, collate_fn=collate_fn)
    return nn.Sequential(on_device, backbone), loader


def extract_global(backbone: nn.Module, dataset: Dataset, batch_size: int = 256, workers: int = 0,
                   device: torch.device | str = "cpu", progress: bool = True,
                   batch_transform: nn.Module | None = None, shard: bool = False,
                   collate: Callable | None = None,
                   feature_sink: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's global feature (what DeepCluster clusters) for every image, in eval mode.
    ``backbone`` may be any module from a batch to one row per image (v2 adds its projector; the
    raw-pixel baseline is a ``Flatten``).

    ``batch_transform`` runs on each batch before the backbone (the batched extraction pipeline).
    With ``shard`` under torch.distributed, only this process's contiguous shard of ``dataset``
    is extracted and returned (``shard_range``; ``gather_rows`` joins the shards). ``collate``:
    how the loader makes batches (e.g. ``device_decode.collate_encoded``). ``feature_sink``:
    see ``extract``.
    """
    device = torch.device(device)
    if shard:
        dataset = dataset_shard(dataset)
    fn, loader = _global_pass(backbone, dataset, batch_size, workers, device, batch_transform,
                              collate)
    with _eval_mode(backbone):
        return extract(fn, loader, device, progress=progress, feature_sink=feature_sink)


DEFAULT_FEATURE_MEMORY = 2 << 30
"""Bytes of full-width float32 features ``extract_whitened`` holds in memory (per process) rather
than spilling them to disk. Holding skips writing and reading back N x D values (at N = 240k,
D = 2048: 4-13% of the clustering step on this project's 2 cores with the file in the page cache,
docs/bench.md; more where the file goes to a real disk). 2 GiB holds ResNet-50's features
(D = 2048) of 260k images, or the default small CNN's (D = 256) of 2M, beside a dataset and a
model on a machine of a few tens of GiB; above it the spill keeps the step's memory near
N x pca_dim, whatever N."""

SPILL_DTYPES = ("float16", "float32")


class _FeatureStore:
    """The full-width features of one extraction pass, kept until the PCA is fitted: one
    preallocated float32 N x D array when N x D x 4 bytes fit ``memory_budget`` (``None``:
    always), otherwise a temporary file of ``spill_dtype`` rows in ``spill_dir``. Where they go
    is decided on the first batch, when D is known."""

    def __init__(self, num: int, memory_budget: int | None, spill_dtype: str,
                 spill_dir: str | os.PathLike | None):
        if spill_dtype not in SPILL_DTYPES:
            raise ValueError(f"spill_dtype must be one of {SPILL_DTYPES}, got {spill_dtype!r}")
        self.num, self.budget, self.dir = num, memory_budget, spill_dir
        self.dtype = np.dtype(spill_dtype)
        self.held: np.ndarray | None = None
        self.spill: IO[bytes] | None = None
        self.rows = self.width = 0

    def __enter__(self) -> "_FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        if self.spill is not None:
            self.spill.close()
        self.held = None

    def _open(self, width: int) -> None:
        self.width = width
        if self.budget is None or self.num * width * 4 <= self.budget:
            self.held = np.empty((self.num, width), dtype=np.float32)
        else:
            self.spill = tempfile.TemporaryFile(dir=self.dir)

    def append(self, batch: torch.Tensor) -> None:
        """Keep a float32 (B, D) batch: as it is in memory, or converted to the spill's dtype
        (on the batch's device, so that a GPU sends half the bytes to the host in float16)."""
        if not self.width:
            self._open(batch.shape[1])
        if self.held is not None:
            self.held[self.rows:self.rows + len(batch)] = batch.cpu().numpy()
        else:
            spilled = batch.to(getattr(torch, self.dtype.name))
            # (aminmax: 20x faster than isinf() on a float16 CPU tensor)
            if self.dtype == np.float16 and any(end.isinf() for end in spilled.aminmax()):
                raise OverflowError("features beyond float16's range (65504) cannot be spilled "
                                    "in float16: use spill_dtype='float32' or a larger budget")
            self.spill.write(spilled.cpu().numpy().tobytes())
        self.rows += len(batch)

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        """The kept features in order, ``rows`` rows at a time (the last chunk may be shorter):
        views of the float32 array, or arrays read back from the file in its dtype."""
        if self.spill is not None:
            self.spill.seek(0)
        for start in range(0, self.rows, rows):
            if self.held is not None:
                yield self.held[start:start + rows]
            else:
                count = min(rows, self.rows - start) * self.width
                yield np.fromfile(self.spill, dtype=self.dtype, count=count).reshape(-1, self.width)


def _project(pca: StreamingPCA, store: _FeatureStore, full_precision: torch.autocast
             ) -> np.ndarray:
    """Every kept row projected by the fitted ``pca`` (float32 N x pca.dim), 16 MiB of float32
    features at a time: the same chunks whether they were held or spilled, so that holding
    gives exactly what a float32 spill gives."""
    reduced = np.empty((store.rows, pca.dim), dtype=np.float32)
    start = 0
    for chunk in store.chunks(max(1, (16 << 20) // (4 * store.width))):
        chunk = torch.from_numpy(chunk).to(pca.mean.device)
        with full_precision:
            reduced[start:start + len(chunk)] = pca.transform(chunk).cpu().numpy()
        start += len(chunk)
    return reduced


@torch.inference_mode()
def extract_whitened(backbone: Backbone, dataset: Dataset, pca_dim: int, batch_size: int = 256,
                     workers: int = 0, device: torch.device | str = "cpu", progress: bool = True,
                     batch_transform: nn.Module | None = None,
                     spill_dir: str | os.PathLike | None = None, shard: bool = False,
                     collate: Callable | None = None, *,
                     memory_budget: int | None = DEFAULT_FEATURE_MEMORY,
                     spill_dtype: str = "float16",
                     feature_sink: Callable | None = None) -> np.ndarray:
    """The backbone's global feature of every image, PCA-whitened to ``pca_dim`` (N x pca_dim,
    float32), with one extraction pass.

    The pass fits a ``StreamingPCA`` on the float32 features and keeps them at full width until
    it is fitted, then projects them a chunk at a time. They are held in memory (one float32
    N x D array) when N x D x 4 bytes fit ``memory_budget`` (``None``: always; ``0``: never),
    which skips the disk; otherwise they are spilled to a temporary file (in ``spill_dir``,
    default the system's temp folder) in ``spill_dtype``. A float16 spill halves the disk
    traffic and changes the result by float16's rounding of the projected features (relative
    2^-11, amplified along the weakest components); a float32 one gives exactly the in-memory
    result. Peak memory: N x pca_dim + D x D + one chunk, plus N x D x 4 bytes when held.

    Under torch.distributed each process passes its own part of the data (or, with ``shard``,
    extracts only its contiguous shard of ``dataset``), and the budget applies to its rows; the
    PCA statistics are all-reduced, so every process projects its rows with the same PCA, fitted
    on all N images, and returns them.

    ``feature_sink(features, labels)`` gets every batch's full-width float32 features (on the
    device) and labels as they are extracted (the online k-NN reuses the pass this way).
    """
    device = torch.device(device)
    if shard:
        dataset = dataset_shard(dataset)
    fn, loader = _global_pass(backbone, dataset, batch_size, workers, device, batch_transform,
                              collate)
    pca = StreamingPCA(pca_dim)
    # Under a bf16/fp16 autocast (the training precision) only the network runs in it.
    full_precision = torch.autocast(device.type, enabled=False)
    store = _FeatureStore(len(loader.dataset), memory_budget, spill_dtype, spill_dir)
    with _eval_mode(backbone), store:
        for out, targets in _outputs(fn, loader, device, "extract", progress):
            with full_precision:
                pca.update(out)
            store.append(out)
            if feature_sink is not None:
                feature_sink(out, targets)
        if pca.count == 0:
            raise ValueError("cannot extract features of an empty dataset")
        pca.all_reduce()  # from here on, count and sums are those of all the processes
        pca.dim = pca_dim_for(pca.count, store.width, pca_dim)
        with full_precision:
            pca.fit()
        return _project(pca, store, full_precision)


def pooled_map(backbone: Backbone, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function giving the clustered ``global`` feature, or one benchmark layer pooled
    (``feature1``..``feature5`` on their grids, ``avgpool``)."""
    if layer == "global":
        return backbone
    run = pooled_layers(backbone, (layer,))
    return lambda x: run(x)[layer]


def pool_feature_map(name: str, feature_map: torch.Tensor) -> torch.Tensor:
    """Pool a stage's map to the benchmark grid (12/6/4/3/2) and flatten it.

    At the reference size (ResNet-50 at 224 px) this is the references' exact AvgPool2d; at any
    other size, adaptive average pooling to the same grid.
    """
    size, kernel, stride, padding, grid = EXACT_POOLING[name]
    if feature_map.shape[-2:] == (size, size):
        pooled = nn.functional.avg_pool2d(feature_map, kernel, stride, padding)
    else:
        pooled = nn.functional.adaptive_avg_pool2d(feature_map, grid)
    return pooled.flatten(1)


def pooled_layers(backbone: Backbone, layers: tuple[str, ...] = LAYERS
                  ) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """One forward pass giving each requested layer pooled and flattened: ``feature1``..``feature5``
    on the benchmark grids, ``avgpool`` the global average of the last stage."""
    unknown = sorted(set(layers) - set(LAYERS))
    if unknown:
        raise ValueError(f"unknown layer(s) {', '.join(unknown)}; choose from {', '.join(LAYERS)}")

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = backbone.forward_features(x)
        out = {name: pool_feature_map(name, maps[name]) for name in layers if name != "avgpool"}
        if "avgpool" in layers:
            out["avgpool"] = maps["feature5"].mean(dim=(2, 3))
        return out
    return run


@torch.inference_mode()
def extract_layers(backbone: Backbone, dataset: Dataset, layers: tuple[str, ...] = LAYERS,
                   batch_size: int = 256, workers: int = 0, device: torch.device | str = "cpu",
                   progress: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pooled features of several layers from one pass over ``dataset`` (eval mode, float32)."""
    backbone.eval()
    run = pooled_layers(backbone, layers)
    device = torch.device(device)
    num = len(dataset)
    features: dict[str, np.ndarray] = {}
    labels = np.empty(num, dtype=np.int64)
    start = 0
    for images, targets in progress_bar(make_loader(dataset, batch_size, workers), "extract layers",
                                        enabled=progress):
        for name, out in run(images.to(device, non_blocking=True)).items():
            if name not in features:
                features[name] = np.empty((num, out.shape[1]), dtype=np.float32)
            features[name][start:start + len(out)] = out.float().cpu().numpy()
        labels[start:start + len(targets)] = targets.numpy()
        start += len(targets)
    return features, labels
