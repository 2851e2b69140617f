"""The supervised baseline: the same network trained with labels (moved out of the linear probe;
becomes a method of the training engine)."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import Dataset

from .checkpoint import backbone_from_checkpoint, save_checkpoint
from .data import ArrayImageDataset
from .features import make_loader
from .models import DeepClusterModel
from .readers import load_benchmark_dataset
from .report import console
from .transforms import ChannelsLast, is_small, training_pipeline


def _labelled(data: str, split: str, limit: int) -> Dataset:
    dataset = load_benchmark_dataset(data, split)
    if dataset.targets is None:
        raise ValueError(f"--data {data!r} ({split} split) has no labels; supervised training needs them")
    return dataset.subset(limit) if limit else dataset



def train_supervised(checkpoint: str | Path, out: str | Path, data: str | None = None,
                     epochs: int = 5, lr: float = 0.05, weight_decay: float = 5e-4,
                     batch_size: int = 256, subset: int = 0, workers: int = 0,
                     threads: int = 0, progress: bool = True) -> Path:
    """Train ``checkpoint``'s architecture from its seeded initialisation with cross-entropy on the
    true labels (its pretraining augmentation, SGD momentum 0.9, cosine lr), and save a checkpoint
    with the pretraining keys, so that every benchmark accepts it as the supervised baseline."""
    from .pretrain import train_one_epoch

    backbone, config = backbone_from_checkpoint(checkpoint, random_init=True)
    data = data or config.data
    dataset = _labelled(data, "train", subset)
    classes = max(len(dataset.classes), int(dataset.targets.max()) + 1)
    in_memory = isinstance(dataset, ArrayImageDataset) and is_small(config.image_size)
    pipeline = training_pipeline(config.augmentation, config.image_size, in_memory)
    train_set = dataset.with_transform(pipeline.sample)
    fabric = Fabric(accelerator=config.accelerator, devices=1, precision=config.precision)
    if threads or config.threads:
        torch.set_num_threads(threads or config.threads)
    torch.manual_seed(config.seed)
    model = DeepClusterModel(backbone.train(), classes)
    batch_transform = pipeline.batch
    if getattr(config, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
        batch_transform = nn.Sequential(batch_transform, ChannelsLast())
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 0.5 * (1.0 + math.cos(math.pi * e / epochs)))
    fabric_model, optimizer = fabric.setup(model, optimizer)
    batch_transform = batch_transform.to(fabric.device)
    loader = fabric.setup_dataloaders(
        make_loader(train_set, batch_size, workers, shuffle=True,
                    generator=torch.Generator().manual_seed(config.seed)),
        use_distributed_sampler=False)
    start = time.perf_counter()
    for epoch in range(epochs):
        loss = train_one_epoch(fabric, fabric_model, optimizer, loader, batch_transform,
                               desc=f"supervised {epoch + 1}/{epochs}")
        scheduler.step()
        if progress:
            console.print(f"supervised epoch {epoch + 1}/{epochs}  loss={loss:.3f}")
    seconds = time.perf_counter() - start
    saved_config = replace(config, data=data, subset=subset, out=str(out))
    path = Path(out) / "checkpoints" / "last.ckpt"
    save_checkpoint({
        "config": saved_config.to_dict(),
        "epoch": epochs,
        "backbone": model.backbone.state_dict(),
        "head": model.head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "assignments": torch.from_numpy(np.asarray(dataset.targets, dtype=np.int64)),
        "rng": torch.get_rng_state(),
        "supervised": {"like": str(checkpoint), "data": data, "epochs": epochs, "lr": lr,
                       "weight_decay": weight_decay, "batch_size": batch_size, "seconds": seconds},
    }, path)
    return path


