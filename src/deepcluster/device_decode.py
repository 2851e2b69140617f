"""JPEG decoding on the training device (``--decode-on-device``).

The data loader only reads each file's bytes (``EncodedImages``); the batch transform on the
device decodes the whole batch at once (``torchvision.io.decode_jpeg(..., device=...)``, nvJPEG on
a GPU), crops and resizes each decoded image there (``transforms.device_decode_pipeline``: the
images differ in size), stacks them, and runs the rest of the augmentation (flip, jitter,
normalisation) on the whole batch. On a GPU this takes JPEG decoding and resizing off the CPU cores,
which otherwise bound ImageNet training (about 270 images/s per core). The same code runs on the
CPU (decoding there, in the main process or the loader workers), which is how it is tested.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file


class EncodedImages:
    """A batch of encoded image files (1-D uint8 tensors, on the CPU). ``to`` leaves it where it
    is, so that the loaders' device transfer does not move the bytes: the decoder wants them on
    the CPU and writes the pixels onto its own device."""

    def __init__(self, data: list[torch.Tensor]):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def to(self, *args, **kwargs) -> "EncodedImages":
        return self


def read_encoded(path) -> torch.Tensor:
    """A file's bytes as a 1-D uint8 tensor (no decoding)."""
    return read_file(str(path))


def collate_encoded(samples: list[tuple[torch.Tensor, int]]) -> tuple[EncodedImages, torch.Tensor]:
    """Collate (bytes, label) samples: the bytes as one ``EncodedImages``, the labels stacked."""
    return (EncodedImages([data for data, _ in samples]),
            torch.tensor([label for _, label in samples], dtype=torch.int64))


class DecodeOnDevice(nn.Module):
    """``EncodedImages`` -> a batch on this module's device: decode every image there (RGB uint8),
    apply ``per_image`` (a torchvision v2 transform of one CHW image, e.g. a crop to a fixed size)
    to each, stack, and apply ``batch`` to the stacked batch."""

    def __init__(self, per_image: Callable, batch: nn.Module | None = None):
        super().__init__()
        self.per_image = per_image
        self.batch = batch or nn.Identity()
        self.register_buffer("_device", torch.empty(0), persistent=False)  # follows .to(device)

    def forward(self, images: EncodedImages) -> torch.Tensor:
        decoded = decode_batch(images.data, self._device.device)
        return self.batch(torch.stack([self.per_image(image) for image in decoded]))


def decode_batch(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode encoded images to RGB uint8 CHW tensors on ``device``: all JPEGs in one call; an
    image that is not a JPEG the decoder takes (PNG, CMYK JPEG) on the CPU, then moved."""
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return [_decode_one(item, device) for item in data]


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return decode_image(data, mode=ImageReadMode.RGB).to(device)
