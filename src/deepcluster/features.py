"""Feature extraction: run a frozen network over a dataset into one preallocated array."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .models import Backbone


def make_loader(dataset: Dataset, batch_size: int, workers: int, **kwargs) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                      persistent_workers=False, pin_memory=torch.cuda.is_available(), **kwargs)


@torch.inference_mode()
def extract(fn: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, device: torch.device,
            desc: str = "extract", progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``fn`` to every batch, in dataset order; return (features float32 N x D, labels N)."""
    num = len(loader.dataset)
    features: np.ndarray | None = None
    labels = np.empty(num, dtype=np.int64)
    start = 0
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=not progress,
                                dynamic_ncols=True):
        out = fn(images.to(device, non_blocking=True)).flatten(1).float().cpu().numpy()
        if features is None:
            features = np.empty((num, out.shape[1]), dtype=np.float32)
        features[start:start + len(out)] = out
        labels[start:start + len(out)] = targets.numpy()
        start += len(out)
    if features is None:
        raise ValueError("cannot extract features of an empty dataset")
    return features, labels


def extract_global(backbone: Backbone, dataset: Dataset, batch_size: int = 256, workers: int = 0,
                   device: torch.device | str = "cpu", progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's global feature (what DeepCluster clusters) for every image, in eval mode."""
    was_training = backbone.training
    backbone.eval()
    try:
        return extract(backbone, make_loader(dataset, batch_size, workers), torch.device(device),
                       desc="extract", progress=progress)
    finally:
        backbone.train(was_training)


def pooled_map(backbone: Backbone, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function giving one feature map (``feature1``..``feature5``) or ``avgpool`` / ``global``."""
    if layer == "global":
        return backbone
    if layer == "avgpool":
        return lambda x: nn.functional.adaptive_avg_pool2d(backbone.forward_features(x)["feature5"], 1)
    return lambda x: backbone.forward_features(x)[layer]
