"""Feature extraction: run a frozen network over a dataset into one preallocated array.

Under torch.distributed (``shard=True``) each process extracts its own contiguous shard of the
dataset, in dataset order (``distributed.dataset_shard``); ``distributed.gather_rows`` puts the
shards back together.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from .clustering import pca_dim_for
from .distributed import dataset_shard
from .models import FEATURE_NAMES, Backbone
from .pca import StreamingPCA
from .report import progress_bar

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
            desc: str = "extract", progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``fn`` to every batch, in dataset order; return (features float32 N x D, labels N)."""
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


def _global_pass(backbone: Backbone, dataset: Dataset, batch_size: int, workers: int,
                 device: torch.device, batch_transform: nn.Module | None,
                 collate: Callable | None = None) -> tuple[nn.Module, DataLoader]:
    """The function and loader of a pass with the backbone's global feature; the batch transform
    runs in the loader workers (CPU) or on the device (``split_batch_transform``)."""
    collate_fn, on_device = split_batch_transform(batch_transform or nn.Identity(), workers, device,
                                                  collate)
    loader = make_loader(dataset, batch_size, workers, collate_fn=collate_fn)
    return nn.Sequential(on_device, backbone), loader


def extract_global(backbone: Backbone, dataset: Dataset, batch_size: int = 256, workers: int = 0,
                   device: torch.device | str = "cpu", progress: bool = True,
                   batch_transform: nn.Module | None = None, shard: bool = False,
                   collate: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's global feature (what DeepCluster clusters) for every image, in eval mode.

    ``batch_transform`` runs on each batch before the backbone (the batched extraction pipeline).
    With ``shard`` under torch.distributed, only this process's contiguous shard of ``dataset``
    is extracted and returned (``shard_range``; ``gather_rows`` joins the shards). ``collate``:
    how the loader makes batches (e.g. ``device_decode.collate_encoded``).
    """
    device = torch.device(device)
    if shard:
        dataset = dataset_shard(dataset)
    fn, loader = _global_pass(backbone, dataset, batch_size, workers, device, batch_transform,
                              collate)
    with _eval_mode(backbone):
        return extract(fn, loader, device, progress=progress)


@torch.inference_mode()
def extract_whitened(backbone: Backbone, dataset: Dataset, pca_dim: int, batch_size: int = 256,
                     workers: int = 0, device: torch.device | str = "cpu", progress: bool = True,
                     batch_transform: nn.Module | None = None,
                     spill_dir: str | os.PathLike | None = None, shard: bool = False,
                     collate: Callable | None = None) -> np.ndarray:
    """The backbone's global feature of every image, PCA-whitened to ``pca_dim`` (N x pca_dim,
    float32), without the N x D matrix in memory.

    One extraction pass fits a ``StreamingPCA`` and appends the full-width features to a temporary
    file (in ``spill_dir``, default the system's temp folder); the file is then read back and
    projected a chunk at a time. Peak memory: N x pca_dim + D x D + one chunk.

    Under torch.distributed each process passes its own part of the data (or, with ``shard``,
    extracts only its contiguous shard of ``dataset``); the PCA statistics are all-reduced, so
    every process projects its rows with the same PCA, fitted on all N images, and returns them.
    """
    device = torch.device(device)
    if shard:
        dataset = dataset_shard(dataset)
    fn, loader = _global_pass(backbone, dataset, batch_size, workers, device, batch_transform,
                              collate)
    pca = StreamingPCA(pca_dim)
    # Under a bf16/fp16 autocast (the training precision) only the network runs in it.
    full_precision = torch.autocast(device.type, enabled=False)
    width = 0
    with _eval_mode(backbone), tempfile.TemporaryFile(dir=spill_dir) as spill:
        for out, _ in _outputs(fn, loader, device, "extract", progress):
            with full_precision:
                pca.update(out)
            width = out.shape[1]
            spill.write(out.cpu().numpy().tobytes())
        if pca.count == 0:
            raise ValueError("cannot extract features of an empty dataset")
        num = pca.count  # this process's rows (all of them without torch.distributed)
        pca.all_reduce()  # from here on, count and sums are those of all the processes
        pca.dim = pca_dim_for(pca.count, width, pca_dim)
        with full_precision:
            pca.fit()
        spill.seek(0)
        reduced = np.empty((num, pca.dim), dtype=np.float32)
        rows = max(1, (16 << 20) // (4 * width))  # read back 16 MiB at a time
        for start in range(0, num, rows):
            chunk = np.fromfile(spill, dtype=np.float32, count=min(rows, num - start) * width)
            chunk = torch.from_numpy(chunk.reshape(-1, width)).to(pca.mean.device)
            with full_precision:
                reduced[start:start + len(chunk)] = pca.transform(chunk).cpu().numpy()
    return reduced


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
