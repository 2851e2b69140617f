"""Image transforms: the extraction transform and the training augmentations of both references.

- ``extraction_transform``: no randomness. Large images: short side to 256/224 of the crop size,
  centre crop, ImageNet mean/std. Small images (28-64 px): resize to the target size only.
- ``training_transform(name)``:
  ``mmselfsup`` RandomResizedCrop, flip, RandomRotation(2), ColorJitter(0.4, 0.4, 1.0, 0.5),
  RandomGrayscale(0.2) (MMSelfSup's DeepCluster);
  ``original`` RandomResizedCrop and flip (facebookresearch/deepcluster);
  ``small`` a milder crop (scale 0.3-1) and flip, for 28-64 px data;
  ``none`` the extraction transform (no augmentation).
Every transform returns a 3-channel float tensor; grey images are repeated over the channels.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Small grey datasets are centred at mid-grey rather than with ImageNet statistics.
SMALL_MEAN = (0.5, 0.5, 0.5)
SMALL_STD = (0.25, 0.25, 0.25)

AUGMENTATIONS = ("mmselfsup", "original", "small", "none")
SMALL_IMAGE_LIMIT = 64  # at or below this size the small-image variants apply


def is_small(image_size: int) -> bool:
    return image_size <= SMALL_IMAGE_LIMIT


def _normalise(image_size: int) -> list[Callable]:
    mean, std = (SMALL_MEAN, SMALL_STD) if is_small(image_size) else (IMAGENET_MEAN, IMAGENET_STD)
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def _rgb() -> Callable:
    return v2.RGB()


def extraction_transform(image_size: int) -> Callable:
    """Deterministic transform used for clustering features and for every benchmark."""
    if is_small(image_size):
        steps = [_rgb(), v2.Resize((image_size, image_size), antialias=True)]
    else:
        resize = round(image_size * 256 / 224)
        steps = [_rgb(), v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(steps + _normalise(image_size))


def training_transform(name: str, image_size: int) -> Callable:
    """The pretraining augmentation ``name`` (one of AUGMENTATIONS) at ``image_size``."""
    if name == "none":
        return extraction_transform(image_size)
    if name == "mmselfsup":
        steps = [
            v2.RandomResizedCrop(image_size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(2),
            v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=1.0, hue=0.5),
            v2.RandomGrayscale(p=0.2),
        ]
    elif name == "original":
        steps = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    elif name == "small":
        steps = [v2.RandomResizedCrop(image_size, scale=(0.3, 1.0), antialias=True),
                 v2.RandomHorizontalFlip()]
    else:
        raise ValueError(f"augmentation {name!r} is not one of {', '.join(AUGMENTATIONS)}")
    return v2.Compose([_rgb()] + steps + _normalise(image_size))
