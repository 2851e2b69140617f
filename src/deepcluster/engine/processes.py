"""Start-up of the run's processes (Lightning Fabric), the model's placement on them, and the
seeding that makes every epoch the same whether or not the run was resumed before it."""

from __future__ import annotations

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import nn

from ..config import PretrainConfig
from ..distributed import broadcast_from_rank0, launched_by_torchrun
from ..precision import resolve_precision


def start_processes(config: PretrainConfig) -> Fabric:
    """One process, or DDP over ``config.devices`` processes (started here), or over the
    processes torchrun started (on every node: LOCAL_WORLD_SIZE devices, WORLD_SIZE in all);
    then the torch thread count and the seed of the model's initialisation."""
    devices, num_nodes = launched_by_torchrun() or (config.devices, 1)
    several = devices * num_nodes > 1
    fabric = Fabric(accelerator=config.accelerator, devices=devices, num_nodes=num_nodes,
                    strategy="ddp" if several else "auto",
                    precision=resolve_precision(config.precision, config.accelerator))
    if several:
        fabric.launch()  # starts the other processes (devices=N), or joins torchrun's
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    return fabric


def local_batch_size(batch_size: int, world_size: int) -> int:
    """Each process's share of the global ``batch_size``."""
    if batch_size % world_size:
        raise ValueError(f"batch_size={batch_size} is the global batch; it must be a multiple of "
                         f"the {world_size} processes")
    return batch_size // world_size


def prepare_model(model: nn.Module, config: PretrainConfig, fabric: Fabric) -> nn.Module:
    """``model`` (with a ``backbone``) in channels-last layout, with SyncBatchNorm across GPUs,
    its backbone compiled, as ``config`` asks."""
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fabric.world_size > 1 and sync_batchnorm(fabric.device):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if config.compile:
        model.backbone.compile()  # in place: the state_dict keys stay those of the eager model
    return model


def sync_batchnorm(device: torch.device) -> bool:
    """Whether BatchNorm becomes SyncBatchNorm across processes.

    Per-process batch statistics are those of B / world images, not of the global batch that one
    process would normalise, so DDP with plain BatchNorm trains a (slightly) different network
    than one process does. SyncBatchNorm all-reduces the statistics and gives the global batch's:
    the run then matches the single-process one. torch implements it for GPUs only (its CPU path
    raises "SyncBatchNorm expected input tensor to be on GPU"; torch 2.14 has no CPU kernels), so
    on CPUs each process normalises its own B / world images, and rank 0's running statistics
    are broadcast after every epoch (``broadcast_buffers``).
    """
    return device.type == "cuda"


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every process, so that every process
    extracts its shard with the same network. (DDP broadcasts them before each forward pass, but
    the last training step leaves each process with its own; with SyncBatchNorm they agree.)"""
    broadcast_from_rank0(list(model.buffers()))


def seed_epoch(seed: int, epoch: int) -> None:
    """The random stream of 0-based epoch ``epoch``, the same on every process."""
    torch.manual_seed(seed + epoch + 1)


def seed_process_stream(seed: int, epoch: int, rank: int) -> None:
    """After the epoch's common draws: each process other than rank 0 its own random stream
    (augmentation, dropout); rank 0 keeps the single-process one."""
    if rank > 0:
        torch.manual_seed(int(np.random.SeedSequence([seed, epoch + 1, rank]).generate_state(1)[0]))
