"""Where the linear probe's batches come from: the feature cache, or the backbone on every batch.

Two modes, chosen by the augmentation:

- **cached**: with ``augmentation="none"`` the training features never change, so they are
  extracted once (float16 by default, to halve the memory) and the heads train on the cache for
  as many epochs as wanted; this is what makes the small-image preset take minutes;
- **streamed**: with a random augmentation every batch costs one backbone forward pass (shared by
  all heads); this is the ImageNet / Places205 / iNaturalist setting.

Either way every epoch draws its order (and its augmentation) from a seed of its own
(``epoch_seed``), so that an epoch of a resumed probe sees the batches of an uninterrupted one.
The probes' training augmentations (``probe_train_transform``) live here too, since only the
streamed mode uses them.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Callable

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import InterpolationMode, v2

from ..data import ArrayImageDataset
from ..features import extract_layers, make_loader, pooled_layers
from ..models import Backbone
from ..console import progress_bar
from ..transforms import (extraction_pipeline, extraction_transform, is_small, normalise,
                          training_transform)
from .linear import Batches
from .linear_config import PROBE_AUGMENTATIONS, LinearConfig

BatchSource = Callable[[], Batches]
EpochSource = Callable[[int], Batches]  # the training batches of a 0-based epoch


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of 0-based ``epoch``'s data order and augmentation: a function of the run's seed
    and the epoch only, whether or not the run was resumed before it."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------
# Training augmentations of the streamed mode


class Lighting:
    """AlexNet-style PCA colour noise on a [0, 1] tensor (ImageNet eigenvalues, alpha std 0.1)."""

    EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
    EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                           [-0.5808, -0.0045, -0.8140],
                           [-0.5836, -0.6948, 0.4203]])

    def __init__(self, alpha_std: float = 0.1):
        self.alpha_std = alpha_std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.alpha_std
        rgb = (self.EIGVEC * alpha * self.EIGVAL).sum(dim=1)
        return image + rgb.view(3, 1, 1)


def probe_train_transform(name: str, image_size: int) -> Callable:
    """The probe's training augmentation at ``image_size`` (see PROBE_AUGMENTATIONS)."""
    if name == "none":
        return extraction_transform(image_size)
    if name == "crop-flip":
        return training_transform("original", image_size)
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    normalisation = normalise(image_size)[-1:]
    if name == "imagenet-mhead":
        steps = [v2.RandomResizedCrop(image_size, interpolation=InterpolationMode.BICUBIC,
                                      antialias=True),
                 v2.RandomHorizontalFlip(),
                 v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0),
                 *to_tensor, Lighting()]
    elif name == "places":
        resize = round(image_size * 256 / 224)
        steps = [v2.Resize(resize, antialias=True), v2.CenterCrop(resize),
                 v2.RandomCrop(image_size), v2.RandomHorizontalFlip(), *to_tensor]
    else:
        raise ValueError(f"augmentation {name!r} is not one of {', '.join(PROBE_AUGMENTATIONS)}")
    return v2.Compose([v2.RGB(), *steps, *normalisation])


# ----------------------------------------------------------------------------------------------
# The cache


class _BatchTransformed(nn.Module):
    """A backbone whose ``forward_features`` first applies a batch transform (the batched
    extraction pipeline of in-memory small images), so ``features.extract_layers`` can run it."""

    def __init__(self, backbone: Backbone, batch_transform: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.batch_transform = batch_transform

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone.forward_features(self.batch_transform(x))


def extraction_inputs(dataset: Dataset, image_size: int) -> tuple[Dataset, nn.Module]:
    """The dataset with its extraction transform, and the transform left for each batch: small
    images held in memory are converted a whole batch at a time, as in pretraining."""
    in_memory = isinstance(dataset, ArrayImageDataset) and is_small(image_size)
    pipeline = extraction_pipeline(image_size, in_memory)
    return dataset.with_transform(pipeline.sample), pipeline.batch


def cache_features(backbone: Backbone, dataset: Dataset, layers: tuple[str, ...], dtype: str,
                   batch_size: int, workers: int, device: torch.device, desc: str,
                   batch_transform: nn.Module | None = None, chunk: int = 8192
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pooled features of every image, stored as ``dtype`` (CPU tensors).

    Extracted in chunks so that only one chunk is ever held in float32. A float16 layer whose
    values would overflow is kept in float32 instead.
    """
    if batch_transform is not None:
        backbone = _BatchTransformed(backbone, batch_transform.to(device))
    num = len(dataset)
    cache: dict[str, torch.Tensor] = {}
    labels = torch.empty(num, dtype=torch.int64)
    for start in progress_bar(range(0, num, chunk), desc):
        part = Subset(dataset, range(start, min(start + chunk, num)))
        features, targets = extract_layers(backbone, part, layers, batch_size, workers, device,
                                           progress=False)
        for name, values in features.items():
            values = torch.from_numpy(values)
            if name not in cache:
                store = getattr(torch, dtype)
                cache[name] = torch.empty((num, values.shape[1]), dtype=store)
            if cache[name].dtype == torch.float16 and values.abs().max() > 6e4:
                cache[name] = cache[name].float()
            cache[name][start:start + len(values)] = values.to(cache[name].dtype)
        labels[start:start + len(targets)] = torch.from_numpy(targets)
    return cache, labels


def cached_batches(cache: dict[str, torch.Tensor], labels: torch.Tensor, batch_size: int,
                   generator: torch.Generator | None = None, device: torch.device | None = None
                   ) -> Batches:
    """Batches from the cache, shuffled with ``generator`` when given, as float32."""
    num = len(labels)
    order = torch.randperm(num, generator=generator) if generator is not None else torch.arange(num)
    for start in range(0, num, batch_size):
        index = order[start:start + batch_size]
        yield ({name: values[index].to(device).float() for name, values in cache.items()},
               labels[index].to(device))


# ----------------------------------------------------------------------------------------------
# The backbone applied to every batch, and the choice between the two


def streamed_batches(fabric: Fabric, backbone: Backbone, loader: DataLoader,
                     layers: tuple[str, ...], desc: str, layout: nn.Module | None = None) -> Batches:
    """One frozen backbone forward per batch, shared by every head; ``layout`` prepares the
    batch (channels-last) before the backbone."""
    run = pooled_layers(backbone, layers)
    for images, targets in progress_bar(loader, desc):
        backbone.eval()  # nothing may put it back into training mode behind our back
        if layout is not None:
            images = layout(images)
        with torch.no_grad(), fabric.autocast():
            features = {name: value.float() for name, value in run(images).items()}
        yield features, targets


def feature_sources(fabric: Fabric, backbone: Backbone, config: LinearConfig, train: Dataset,
                    test: Dataset, image_size: int, layout: nn.Module
                    ) -> tuple[EpochSource, BatchSource, float]:
    """Where the heads' batches come from: the cache (extracted here; its seconds are returned)
    or the frozen backbone on every augmented batch (0 seconds up front). The training source
    takes the 0-based epoch, whose seed (``epoch_seed``) orders its batches; ``layout`` puts each
    batch in the backbone's memory layout."""
    layers = config.layers
    generator = torch.Generator()
    if config.cached:
        start = time.perf_counter()
        caches = []
        for split, dataset in (("train", train), ("test", test)):
            inputs, batch_transform = extraction_inputs(dataset, image_size)
            caches.append(cache_features(backbone, inputs, layers, config.cache_dtype,
                                         config.eval_batch_size, config.workers, fabric.device,
                                         f"cache {split}", nn.Sequential(batch_transform, layout)))
        (train_cache, train_labels), (test_cache, test_labels) = caches
        train_batches = partial(cached_batches, train_cache, train_labels, config.batch_size,
                                generator, fabric.device)
        test_batches = partial(cached_batches, test_cache, test_labels, config.eval_batch_size,
                               None, fabric.device)
        return _seeded(train_batches, generator, config.seed), test_batches, \
            time.perf_counter() - start
    train_set = train.with_transform(probe_train_transform(config.augmentation, image_size))
    train_loader = fabric.setup_dataloaders(
        make_loader(train_set, config.batch_size, config.workers, shuffle=True,
                    generator=generator), use_distributed_sampler=False)
    test_loader = fabric.setup_dataloaders(
        make_loader(test.with_transform(extraction_transform(image_size)),
                    config.eval_batch_size, config.workers), use_distributed_sampler=False)
    train_batches = partial(streamed_batches, fabric, backbone, train_loader, layers,
                            "probe train", layout)
    return (_seeded(train_batches, generator, config.seed),
            partial(streamed_batches, fabric, backbone, test_loader, layers, "probe eval", layout),
            0.0)


def _seeded(batches: BatchSource, generator: torch.Generator, seed: int) -> EpochSource:
    """``batches`` with ``generator`` (the shuffling, and the loader workers' base seed) and the
    global torch stream (augmentation in this process) seeded for the epoch first."""
    def epoch_batches(epoch: int) -> Batches:
        generator.manual_seed(epoch_seed(seed, epoch))
        torch.manual_seed(epoch_seed(seed, epoch))
        return batches()
    return epoch_batches
