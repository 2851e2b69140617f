"""Image transforms: the extraction transform and the training augmentations of both references.

- ``extraction_transform``: no randomness. Large images: short side to 256/224 of the crop size,
  centre crop, ImageNet mean/std. Small images (28-64 px): resize to the target size only.
- ``training_transform(name)``:
  ``mmselfsup`` RandomResizedCrop, flip, RandomRotation(2), ColorJitter(0.4, 0.4, 1.0, 0.5),
  RandomGrayscale(0.2) (MMSelfSup's DeepCluster);
  ``original`` RandomResizedCrop and flip (facebookresearch/deepcluster);
  ``small`` a milder crop (scale 0.3-1) and flip, for 28-64 px data;
  ``strong`` the SwAV/DeepCluster-v2 crop range (scale 0.14-1), flip and brightness/contrast
  jitter, for 28-64 px data;
  ``none`` the extraction transform (no augmentation).
Every transform returns a 3-channel float tensor; grey images are repeated over the channels.

Two ways to apply them (``Pipeline``): per image in the data loader (torchvision, for image files),
or per batch after the batch reaches the device (kornia, for small images held in memory, where
per-image work would cost more than the network itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torchvision.transforms import v2

from .data import ArrayImageDataset, ImageDataset, Uint8Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Small grey datasets are centred at mid-grey rather than with ImageNet statistics.
SMALL_MEAN = (0.5, 0.5, 0.5)
SMALL_STD = (0.25, 0.25, 0.25)

AUGMENTATIONS = ("mmselfsup", "original", "small", "strong", "none")
STRONG_CROP_SCALE = (0.14, 1.0)
SMALL_IMAGE_LIMIT = 64  # at or below this size the small-image variants apply


def is_small(image_size: int) -> bool:
    return image_size <= SMALL_IMAGE_LIMIT


def normalise(image_size: int) -> list[Callable]:
    mean, std = (SMALL_MEAN, SMALL_STD) if is_small(image_size) else (IMAGENET_MEAN, IMAGENET_STD)
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def _rgb() -> Callable:
    return v2.RGB()


def extraction_transform(image_size: int) -> Callable:
    """Deterministic transform used for clustering features and for every benchmark."""
    return v2.Compose([_rgb(), *_extraction_resize(image_size), *normalise(image_size)])


def _extraction_resize(image_size: int) -> list[Callable]:
    """Small images: resize to the target size. Large ones: short side to 256/224 of the crop
    size, then a centre crop."""
    if is_small(image_size):
        return [v2.Resize((image_size, image_size), antialias=True)]
    return [v2.Resize(round(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size)]


def training_transform(name: str, image_size: int, min_scale: float = 0.0) -> Callable:
    """The pretraining augmentation ``name`` (one of AUGMENTATIONS) at ``image_size``; a
    ``min_scale`` above 0 replaces the lower bound of its crop's scale range."""
    if name == "none":
        return extraction_transform(image_size)
    steps = [_random_crop(name, image_size, min_scale), v2.RandomHorizontalFlip()]
    if name == "mmselfsup":
        steps += [v2.RandomRotation(2),
                  v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=1.0, hue=0.5),
                  v2.RandomGrayscale(p=0.2)]
    elif name == "strong":
        steps.append(v2.RandomApply([v2.ColorJitter(0.4, 0.4)], p=0.8))
    return v2.Compose([_rgb()] + steps + normalise(image_size))


# The random-resized-crop scale range of each augmentation (torchvision's and kornia's default
# 0.08-1 for the ImageNet recipes).
CROP_SCALES = {"mmselfsup": (0.08, 1.0), "original": (0.08, 1.0), "small": (0.3, 1.0),
               "strong": STRONG_CROP_SCALE}


def crop_scale(name: str, min_scale: float = 0.0) -> tuple[float, float]:
    """The scale range of augmentation ``name``'s crop, from ``min_scale`` where it is above 0
    (at 28 px the strong augmentation's smallest crops keep a part of a garment or a digit:
    docs/study.md, session 16, measures larger ones)."""
    if name not in CROP_SCALES:
        raise ValueError(f"augmentation {name!r} is not one of {', '.join(AUGMENTATIONS)}")
    return (min_scale, 1.0) if min_scale > 0 else CROP_SCALES[name]


def _random_crop(name: str, image_size: int, min_scale: float = 0.0) -> Callable:
    """The per-image random resized crop of augmentation ``name``."""
    return v2.RandomResizedCrop(image_size, scale=crop_scale(name, min_scale), antialias=True)


# ----------------------------------------------------------------------------------------------
# Batched: the same transforms on whole batches of in-memory images


@dataclass
class Pipeline:
    """``sample`` runs per image in the loader; ``batch`` runs on each batch on the device."""

    sample: Callable
    batch: nn.Module


class _ToFloatRGB(nn.Module):
    """uint8 (B, 1 or 3, H, W) -> float in [0, 1], 3 channels (grey ones kept as one with
    ``rgb=False``), resized to ``size`` if given."""

    def __init__(self, size: int | None = None, rgb: bool = True):
        super().__init__()
        self.size, self.rgb = size, rgb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0)
        if x.shape[1] == 1 and self.rgb:
            x = x.expand(-1, 3, -1, -1)
        if self.size is not None and x.shape[-2:] != (self.size, self.size):
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                          antialias=True, align_corners=False)
        return x


class ChannelsLast(nn.Module):
    """Batches in channels-last layout, which the convolutions run faster on (CPU and GPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


def _batch_normalise(image_size: int) -> nn.Module:
    import kornia.augmentation as K

    mean, std = (SMALL_MEAN, SMALL_STD) if is_small(image_size) else (IMAGENET_MEAN, IMAGENET_STD)
    return K.Normalize(torch.tensor(mean), torch.tensor(std))


def _batch_augmentation(name: str, image_size: int, crop: bool = True,
                        min_scale: float = 0.0) -> list[nn.Module]:
    """The augmentation ``name`` as kornia batch modules (``crop=False``: all but the random
    resized crop, for batches already cropped per image)."""
    import kornia.augmentation as K

    scale = crop_scale(name, min_scale)
    steps = [K.RandomResizedCrop((image_size, image_size), scale=scale)] if crop else []
    steps.append(K.RandomHorizontalFlip())
    if name == "mmselfsup":
        steps += [K.RandomRotation(2.0), K.ColorJitter(0.4, 0.4, 1.0, 0.5),
                  K.RandomGrayscale(p=0.2)]
    elif name == "strong":
        steps.append(K.ColorJitter(0.4, 0.4, p=0.8))
    return steps


def _uint8_tensor() -> Callable:
    return Uint8Tensor()  # in-memory datasets fetch whole batches with this transform


def training_pipeline(name: str, image_size: int, in_memory: bool,
                      min_scale: float = 0.0) -> Pipeline:
    if not in_memory:
        return Pipeline(training_transform(name, image_size, min_scale), nn.Identity())
    if name == "none":
        return extraction_pipeline(image_size, in_memory)
    steps = ([_ToFloatRGB()] + _batch_augmentation(name, image_size, min_scale=min_scale) +
             [_batch_normalise(image_size)])
    return Pipeline(_uint8_tensor(), nn.Sequential(*steps))


def extraction_pipeline(image_size: int, in_memory: bool) -> Pipeline:
    if not in_memory:
        return Pipeline(extraction_transform(image_size), nn.Identity())
    if not is_small(image_size):
        raise ValueError("the batched pipeline is for small images; use the per-image one")
    return Pipeline(_uint8_tensor(), nn.Sequential(_ToFloatRGB(image_size),
                                                   _batch_normalise(image_size)))


def pixel_pipeline(image_size: int, in_memory: bool) -> Pipeline:
    """Grey pixel values in [0, 1] at ``image_size``: the raw-pixel baseline's features (grey
    images held in memory a batch at a time, resized as the extraction pipeline resizes them)."""
    if in_memory:
        return Pipeline(_uint8_tensor(), _ToFloatRGB(image_size, rgb=False))
    return Pipeline(v2.Compose([v2.Grayscale(), v2.Resize((image_size, image_size), antialias=True),
                                v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]),
                    nn.Identity())


def extraction_set(images: ImageDataset, image_size: int,
                   channels_last: bool = True) -> tuple[ImageDataset, nn.Module]:
    """``images`` with the extraction transform (a batch at a time for small in-memory images)
    and the batched part of it, channels-last where asked: what the online k-NN and the cluster
    explorer extract with."""
    in_memory = isinstance(images, ArrayImageDataset) and is_small(image_size)
    pipeline = extraction_pipeline(image_size, in_memory)
    batch = nn.Sequential(pipeline.batch, ChannelsLast()) if channels_last else pipeline.batch
    return images.with_transform(pipeline.sample), batch


def device_decode_pipeline(name: str | None, image_size: int, min_scale: float = 0.0) -> Pipeline:
    """For images decoded on the device (``device_decode``): ``sample`` crops and resizes one
    decoded uint8 image (they differ in size), ``batch`` does the rest on the stacked batch.
    ``name`` None: the extraction transform; else the training augmentation ``name``."""
    if name is None or name == "none":
        return Pipeline(v2.Compose(_extraction_resize(image_size)),
                        nn.Sequential(_ToFloatRGB(), _batch_normalise(image_size)))
    rest = _batch_augmentation(name, image_size, crop=False)
    return Pipeline(_random_crop(name, image_size, min_scale),
                    nn.Sequential(_ToFloatRGB(), *rest, _batch_normalise(image_size)))


# ----------------------------------------------------------------------------------------------
# Multi-crop (DeepCluster-v2 / SwAV): several large crops and several small ones per image

SMALL_CROP_SCALE = (0.05, 0.14)


def small_crop_scale(min_scale: float = 0.0, max_scale: float = 0.0) -> tuple[float, float]:
    """The small crops' area range: SwAV's 0.05-0.14, either end replaced where it is above 0
    (at 28 px SwAV's small crops hold 6-10 px of the image)."""
    low, high = min_scale or SMALL_CROP_SCALE[0], max_scale or SMALL_CROP_SCALE[1]
    if low >= high:
        raise ValueError(f"small_crop_min_scale={low} must be below small_crop_max_scale={high}")
    return low, high


def small_crop_size(image_size: int, size: int = 0) -> int:
    """The small crops' side: ``size`` if given, else 96/224 of ``image_size`` (SwAV's ratio)."""
    return size or max(8, round(image_size * 96 / 224))


class MultiCrop(nn.Module):
    """``large`` views at ``image_size`` then ``small`` views at ``small_size``: a list of batches
    (or of single images, per image), large views first."""

    def __init__(self, large_view: Callable, small_view: Callable, large: int, small: int):
        super().__init__()
        self.large_view, self.small_view = large_view, small_view
        self.large, self.small = large, small

    def forward(self, x):
        return ([self.large_view(x) for _ in range(self.large)] +
                [self.small_view(x) for _ in range(self.small)])


class PerView(nn.Module):
    """Apply ``module`` to each view of a multi-crop list."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.module(view) for view in views]


def _view_steps(size: int, scale: tuple[float, float], batched: bool) -> list:
    if batched:
        import kornia.augmentation as K

        return [K.RandomResizedCrop((size, size), scale=scale), K.RandomHorizontalFlip(),
                K.ColorJitter(0.4, 0.4, p=0.8)]
    return [v2.RandomResizedCrop(size, scale=scale, antialias=True), v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4)], p=0.8)]


def multicrop_pipeline(image_size: int, large: int, small: int, small_size: int,
                       in_memory: bool, large_min_scale: float = 0.0,
                       small_min_scale: float = 0.0, small_max_scale: float = 0.0) -> Pipeline:
    """SwAV's multi-crop: ``large`` crops at ``image_size`` (scale 0.14-1, or ``large_min_scale``-1)
    and ``small`` crops at ``small_size`` (scale 0.05-0.14, or ``small_crop_scale``'s range),
    each flipped and brightness/contrast-jittered."""
    small_size = small_crop_size(image_size, small_size)
    large_scale = crop_scale("strong", large_min_scale)  # the strong augmentation's is SwAV's
    small_scale = small_crop_scale(small_min_scale, small_max_scale)
    crops = ((image_size, large_scale), (small_size, small_scale))
    if in_memory:
        batch_normalise = _batch_normalise(image_size)
        views = [nn.Sequential(_ToFloatRGB(), *_view_steps(size, scale, True), batch_normalise)
                 for size, scale in crops]
        return Pipeline(_uint8_tensor(), MultiCrop(views[0], views[1], large, small))
    views = [v2.Compose([_rgb(), *_view_steps(size, scale, False), *normalise(image_size)])
             for size, scale in crops]
    return Pipeline(MultiCrop(views[0], views[1], large, small), nn.Identity())
