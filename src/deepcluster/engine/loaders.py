"""The training loader, built once per run: the images with their indices, in an order that the
engine sets before every epoch.

Every method trains on ``(inputs, indices)`` batches and looks its targets up by index (cluster
ids, memory-bank rows, labels), so that the dataset never changes and loader workers can live for
the whole run (``persistent_workers``) instead of restarting every epoch. The batches of a worker
are augmented from a seed that depends on the epoch and the step only, so that a resumed run
draws the same augmentation as an uninterrupted one with any number of workers.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..features import split_batch_transform


class SeededBatch(list):
    """A batch of indices with the seed its worker draws its augmentation from."""

    seed: int = 0


class IndexedImages(Dataset):
    """``images`` (a dataset of (image, label)) as (image, index) pairs."""

    def __init__(self, images: Dataset):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, _ = self.images[index]
        return image, int(index)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple]:
        if isinstance(indices, SeededBatch) and get_worker_info() is not None:
            torch.manual_seed(indices.seed)  # in a worker: this batch's augmentation stream
        fetch = getattr(self.images, "__getitems__", None)
        samples = fetch(list(indices)) if fetch else [self.images[i] for i in indices]
        return [(image, int(i)) for (image, _), i in zip(samples, indices)]


class EpochBatches(Sampler[list[int]]):
    """This process's batches of the current epoch; ``set_epoch`` gives it the next order."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.order: list[int] = []
        self.seed = 0

    def set_epoch(self, order: Sequence[int], seed: int) -> None:
        self.order, self.seed = list(order), seed

    def __iter__(self) -> Iterator[list[int]]:
        for step, start in enumerate(range(0, len(self.order), self.batch_size)):
            batch = SeededBatch(self.order[start:start + self.batch_size])
            batch.seed = int(np.random.SeedSequence([self.seed, step]).generate_state(1)[0])
            yield batch

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)


def training_loader(fabric: Fabric, images: Dataset, batch_size: int, workers: int,
                    batch_transform: nn.Module, collate: Callable | None = None
                    ) -> tuple[DataLoader, EpochBatches, nn.Module]:
    """The run's training loader, its batch sampler and the part of the batch transform that
    runs on the device (on the CPU with workers, the batched augmentation runs in the workers)."""
    collate_fn, on_device = split_batch_transform(batch_transform, workers, fabric.device, collate)
    batches = EpochBatches(batch_size)
    loader = DataLoader(IndexedImages(images), batch_sampler=batches, num_workers=workers,
                        collate_fn=collate_fn, pin_memory=fabric.device.type == "cuda",
                        persistent_workers=workers > 0)
    return fabric.setup_dataloaders(loader, use_distributed_sampler=False), batches, on_device
