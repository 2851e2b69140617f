"""The DeepCluster training loop.

Before the first epoch and after each one, the whole training set is clustered:
  1. extract the backbone's global feature of every image (eval mode, no augmentation);
  2. PCA-whiten to ``pca_dim`` dimensions and L2-normalise;
  3. k-means with a new seed each time; the cluster ids become the pseudo-labels.
Each epoch then:
  4. samples the same number of images from every non-empty cluster;
  5. re-initialises the linear head (which has no momentum);
  6. trains backbone and head with cross-entropy on the pseudo-labels, with augmentation.

Lightning Fabric handles devices, precision and loggers (CSV and TensorBoard); checkpoints are
written atomically after every epoch and hold everything ``resume`` needs.

The same config runs on one process or on several (``devices=N``, or under ``torchrun``): Fabric's
"ddp" strategy, i.e. torch's DistributedDataParallel, averages the gradients. ``batch_size`` is the
global batch, split evenly over the processes, so that N processes train as one would with the
same config (docs/scaling.md). Across processes (numbered as the steps above):
  1. each process extracts its contiguous shard of the images; the streaming PCA's sums are
     all-reduced; with the faiss k-means, rank 0 gathers the whitened features, clusters them and
     broadcasts the assignments; with the torch k-means every process clusters its shard (sums
     and counts all-reduced) and the assignments are all-gathered: every process holds the same
     N assignments;
  4. every process draws the same global sample list and takes every world_size-th element;
  5. the head is re-initialised from the same seed on every process;
  6. BatchNorm becomes SyncBatchNorm on GPUs (see ``_sync_batchnorm``).
Only rank 0 writes checkpoints, logs and assignment files and prints.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric import Fabric
from lightning.fabric.loggers import CSVLogger, TensorBoardLogger
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import load_checkpoint, save_epoch_checkpoint, save_npy
from .clustering import (ClusteringResult, check_k, cluster_features, cluster_whitened,
                         l2_normalise, nmi, torch_kmeans)
from .config import PretrainConfig
from .data import ArrayImageDataset, ImageFileDataset, load_dataset
from .device_decode import DecodeOnDevice, collate_encoded
from .distributed import broadcast_from_rank0, comm_device, gather_rows
from .features import extract_global, extract_whitened, split_batch_transform
from .models import DeepClusterModel, build_backbone, reset_head
from .report import console, progress_bar
from .sampler import DistributedUniformClusterSampler
from .transforms import (ChannelsLast, device_decode_pipeline, extraction_pipeline, is_small,
                         training_pipeline)

# Config fields that may change when a run is resumed; any other change is refused.
RESUMABLE_CHANGES = {"epochs", "workers", "threads", "out", "accelerator", "devices",
                     "extract_batch_size", "streaming_pca", "keep_every", "compile",
                     "decode_on_device"}



@dataclass
class PretrainResult:
    checkpoint: Path
    history: list[dict[str, Any]]
    assignments: np.ndarray


class PseudoLabelled(Dataset):
    """The training images with their cluster ids as labels."""

    def __init__(self, images: Dataset, assignments: np.ndarray):
        self.images = images
        self.assignments = assignments

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, _ = self.images[index]
        return image, int(self.assignments[index])

    def __getitems__(self, indices: list[int]) -> list[tuple]:
        fetch = getattr(self.images, "__getitems__", None)
        samples = fetch(indices) if fetch else [self.images[i] for i in indices]
        return [(image, int(self.assignments[i])) for (image, _), i in zip(samples, indices)]


@dataclass
class TrainingData:
    """The training images with the training augmentation and with the extraction transform."""

    train_set: Dataset
    eval_set: Dataset
    train_batch: nn.Module  # applied to each training batch on the device
    eval_batch: nn.Module  # applied to each extraction batch on the device
    collate: Callable | None = None  # how samples become batches (None: torch's default)

    @property
    def labels(self) -> np.ndarray | None:
        return self.train_set.targets


def load_training_data(config: PretrainConfig) -> TrainingData:
    images = load_dataset(config.data, "train", skip_unreadable=config.skip_unreadable)
    if config.subset:
        images = images.subset(config.subset)
    if config.decode_on_device:
        if not isinstance(images, ImageFileDataset):
            raise ValueError(f"decode_on_device reads image files; data={config.data!r} is held "
                             "in memory (pass a folder or list file of JPEGs)")
        encoded = images.as_encoded()
        train = device_decode_pipeline(config.augmentation, config.image_size)
        extract = device_decode_pipeline(None, config.image_size)
        return TrainingData(encoded, encoded, DecodeOnDevice(train.sample, train.batch),
                            DecodeOnDevice(extract.sample, extract.batch), collate_encoded)
    # Small images held in memory are augmented a whole batch at a time (much faster on a CPU).
    in_memory = isinstance(images, ArrayImageDataset) and is_small(config.image_size)
    train = training_pipeline(config.augmentation, config.image_size, in_memory)
    extract = extraction_pipeline(config.image_size, in_memory)
    return TrainingData(images.with_transform(train.sample), images.with_transform(extract.sample),
                        train.batch, extract.batch)


def build_optimizer(model: DeepClusterModel, config: PretrainConfig) -> torch.optim.SGD:
    """SGD with momentum for the backbone; the head, re-initialised every epoch, gets none."""
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    return torch.optim.SGD([
        {"params": backbone_params, "momentum": config.momentum},
        {"params": model.head.parameters(), "momentum": 0.0},
    ], lr=config.lr, weight_decay=config.weight_decay)


def learning_rate(config: PretrainConfig, epoch: int) -> float:
    if config.lr_schedule == "cosine":
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * epoch / config.epochs))
    return config.lr


def cluster(fabric: Fabric, model: DeepClusterModel, data: TrainingData, config: PretrainConfig,
            seed: int) -> tuple[ClusteringResult, float]:
    """Steps 1-3: extract, PCA-whiten, k-means. Returns the result and the extraction seconds
    (with ``streaming_pca``, the PCA is fitted during extraction and counted in them)."""
    check_k(len(data.eval_set), config.k)
    sharded = fabric.world_size > 1  # each process extracts its contiguous shard
    options = dict(batch_size=config.extract_batch_size, workers=config.workers,
                   device=fabric.device, progress=fabric.is_global_zero,
                   batch_transform=data.eval_batch, shard=sharded, collate=data.collate)
    start = time.perf_counter()
    with fabric.autocast():  # the training precision (bf16-mixed: bf16 convolutions) here too
        if config.streaming_pca:
            whitened = extract_whitened(model.backbone, data.eval_set, config.pca_dim, **options)
        else:
            features, _ = extract_global(model.backbone, data.eval_set, **options)
    if sharded:
        fabric.barrier()  # the extraction time of the slowest process
    extract_seconds = time.perf_counter() - start
    if sharded:
        shard = whitened if config.streaming_pca else features
        return _cluster_shards(fabric, shard, len(data.eval_set), config, seed), extract_seconds
    if not config.streaming_pca:
        return cluster_features(features, config.k, config.pca_dim, config.kmeans_iters, seed,
                                config.kmeans_backend), extract_seconds
    return cluster_whitened(whitened, config.k, config.kmeans_iters, seed,
                            config.kmeans_backend, copy=False), extract_seconds


def _cluster_shards(fabric: Fabric, shard: np.ndarray, num: int, config: PretrainConfig,
                    seed: int) -> ClusteringResult:
    """Step 3 across processes, from each process's shard of the features (whitened when
    ``streaming_pca``, else full width); every process gets the same ``ClusteringResult``."""
    start = time.perf_counter()
    if config.streaming_pca and config.kmeans_backend == "torch":
        # Every process clusters its own shard (the sums and counts are all-reduced inside, so
        # every process has the same centroids), then the assignments are all-gathered.
        x = torch.from_numpy(l2_normalise(shard, copy=False)).to(comm_device())
        local, centroids, inertia = torch_kmeans(x, config.k, config.kmeans_iters, seed,
                                                 distributed=True)
        assignments = gather_rows(local.cpu().numpy())
        return ClusteringResult(assignments, centroids.cpu().numpy(), inertia,
                                time.perf_counter() - start)
    # faiss (CPU, one process), or the PCA of full-width features: rank 0 gathers the N rows,
    # clusters them as one process would, and broadcasts the result.
    gathered = gather_rows(shard, dst=0)
    result = None
    if fabric.is_global_zero:
        if config.streaming_pca:
            result = cluster_whitened(gathered, config.k, config.kmeans_iters, seed,
                                      config.kmeans_backend, distributed=False, copy=False)
        else:
            result = cluster_features(gathered, config.k, config.pca_dim, config.kmeans_iters,
                                      seed, config.kmeans_backend, distributed=False)
    del gathered
    result = _broadcast_clustering(result, num)
    result.seconds = time.perf_counter() - start
    return result


def _broadcast_clustering(result: ClusteringResult | None, num: int) -> ClusteringResult:
    """Rank 0's clustering on every process: the N assignments as one tensor broadcast, the
    centroids and inertia pickled."""
    device = comm_device()
    assignments = torch.empty(num, dtype=torch.int64, device=device)
    if result is not None:
        assignments.copy_(torch.from_numpy(result.assignments.astype(np.int64)))
    dist.broadcast(assignments, src=0)
    rest = [None if result is None else (result.centroids, result.inertia, result.seconds)]
    dist.broadcast_object_list(rest, src=0, device=device)
    centroids, inertia, seconds = rest[0]
    return ClusteringResult(assignments.cpu().numpy(), centroids, inertia, seconds)


def train_one_epoch(fabric: Fabric, model: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: DataLoader, batch_transform: nn.Module, desc: str) -> float:
    """Steps 5-6 for one epoch; returns the mean loss (over all processes' samples)."""
    model.train()
    total, count = 0.0, 0
    bar = progress_bar(loader, desc, enabled=fabric.is_global_zero)
    for images, targets in bar:
        with torch.no_grad():
            images = batch_transform(images)
        loss = nn.functional.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss)
        optimizer.step()
        total += loss.item() * len(targets)
        count += len(targets)
        bar.set_postfix(loss=f"{total / count:.3f}", refresh=False)
    return mean_over_processes(fabric, total, count)


def pretrain(config: PretrainConfig, resume: str | Path | None = None,
             progress: bool = True) -> PretrainResult:
    """Run DeepCluster with ``config``; ``resume`` continues from a checkpoint of the same run."""
    if config.method == "deepcluster-v2":
        from .v2 import pretrain_v2
        return pretrain_v2(config, resume, progress)
    out = Path(config.out)
    fabric = start_processes(config, out)
    world, rank = fabric.world_size, fabric.global_rank
    local_batch = _local_batch_size(config.batch_size, world)

    data = load_training_data(config)
    if config.channels_last:
        data.train_batch = nn.Sequential(data.train_batch, ChannelsLast())
        data.eval_batch = nn.Sequential(data.eval_batch, ChannelsLast())
    data.train_batch.to(fabric.device)
    data.eval_batch.to(fabric.device)
    model = prepare_model(DeepClusterModel(build_backbone(config.arch, config.sobel), config.k),
                          config, fabric)
    optimizer = build_optimizer(model, config)

    start_epoch, assignments = 0, None
    if resume is not None:
        state = load_checkpoint(resume)
        _check_resumable(PretrainConfig.from_dict(state["config"]), config, resume)
        model.backbone.load_state_dict(state["backbone"])
        model.head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start_epoch = int(state["epoch"])
        assignments = state["assignments"].numpy()
    fabric_model, optimizer = fabric.setup(model, optimizer)
    history: list[dict[str, Any]] = []
    checkpoint_path = out / "checkpoints" / "last.ckpt"

    if assignments is None:
        clustering, extract_seconds = cluster(fabric, model, data, config, seed=config.seed)
        assignments = clustering.assignments
        row = _epoch_row(0, None, clustering, None, data.labels, extract_seconds, 0.0, 0.0)
        _log(fabric, row, history, out, assignments)

    for epoch in range(start_epoch, config.epochs):
        lr = learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Seeding per epoch makes an epoch the same whether or not the run was resumed before it.
        torch.manual_seed(config.seed + epoch + 1)
        if config.reset_head:
            # The same seed on every process: the same head everywhere (DDP does not re-sync it).
            reset_head(model.head)
        seed_process_stream(config, epoch, rank)
        # The same global draw on every process, each taking every world-th image.
        sampler = DistributedUniformClusterSampler(assignments, rank, world,
                                                   seed=config.seed + epoch)
        collate_fn, on_device = split_batch_transform(data.train_batch, config.workers,
                                                      fabric.device, data.collate)
        loader = fabric.setup_dataloaders(
            DataLoader(PseudoLabelled(data.train_set, assignments), batch_size=local_batch,
                       sampler=sampler, num_workers=config.workers, collate_fn=collate_fn,
                       pin_memory=fabric.device.type == "cuda", drop_last=False),
            use_distributed_sampler=False)
        start = time.perf_counter()
        loss = train_one_epoch(fabric, fabric_model, optimizer, loader, on_device,
                               desc=f"epoch {epoch + 1}/{config.epochs}")
        train_seconds = time.perf_counter() - start
        if world > 1:
            _broadcast_buffers(model)

        clustering, extract_seconds = cluster(fabric, model, data, config,
                                              seed=config.seed + epoch + 1)
        row = _epoch_row(epoch + 1, loss, clustering, assignments, data.labels, extract_seconds,
                         train_seconds, lr)
        assignments = clustering.assignments
        if fabric.is_global_zero:
            _save(checkpoint_path, model, optimizer, config, epoch + 1, assignments)
        _log(fabric, row, history, out, assignments)

    finish(fabric, history, progress)
    return PretrainResult(checkpoint_path, history, assignments)


def start_processes(config: PretrainConfig, out: Path) -> Fabric:
    """The run's Fabric, with its other processes started (or torchrun's joined), the torch
    thread count set and the seed of the model's initialisation."""
    fabric = _make_fabric(config, out)
    if fabric.world_size > 1:
        fabric.launch()  # starts the other processes (devices=N), or joins torchrun's
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    return fabric


def prepare_model(model: nn.Module, config: PretrainConfig, fabric: Fabric) -> nn.Module:
    """``model`` (with a ``backbone``) in channels-last layout, with SyncBatchNorm across GPUs,
    its backbone compiled, as ``config`` asks."""
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fabric.world_size > 1 and _sync_batchnorm(fabric.device):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if config.compile:
        model.backbone.compile()  # in place: the state_dict keys stay those of the eager model
    return model


def finish(fabric: Fabric, history: list[dict[str, Any]], progress: bool) -> None:
    """Close the loggers and print the history (rank 0); then wait for every process, so that
    rank 0's files are complete when any process returns."""
    if fabric.is_global_zero:
        for logger in fabric.loggers:
            logger.finalize("success")
        if progress:
            console.print(history_table(history))
    if fabric.world_size > 1:
        fabric.barrier()


def _make_fabric(config: PretrainConfig, out: Path) -> Fabric:
    """One process, or DDP over ``config.devices`` processes; under torchrun, DDP over the
    processes torchrun started (on every node: LOCAL_WORLD_SIZE devices, WORLD_SIZE in all)."""
    devices, num_nodes = config.devices, 1
    if dist.is_available() and dist.is_torchelastic_launched():
        devices = int(os.environ["LOCAL_WORLD_SIZE"])
        num_nodes = int(os.environ["WORLD_SIZE"]) // devices
    several = devices * num_nodes > 1
    return Fabric(accelerator=config.accelerator, devices=devices, num_nodes=num_nodes,
                  strategy="ddp" if several else "auto", precision=config.precision,
                  loggers=[CSVLogger(out, name="", version=""),
                           TensorBoardLogger(out, name="tensorboard", version="")])


def _local_batch_size(batch_size: int, world_size: int) -> int:
    """Each process's share of the global ``batch_size``."""
    if batch_size % world_size:
        raise ValueError(f"batch_size={batch_size} is the global batch; it must be a multiple of "
                         f"the {world_size} processes")
    return batch_size // world_size


def _sync_batchnorm(device: torch.device) -> bool:
    """Whether BatchNorm becomes SyncBatchNorm across processes.

    Per-process batch statistics are those of B / world images, not of the global batch that one
    process would normalise, so DDP with plain BatchNorm trains a (slightly) different network
    than one process does. SyncBatchNorm all-reduces the statistics and gives the global batch's:
    the run then matches the single-process one. torch implements it for GPUs only (its CPU path
    raises "SyncBatchNorm expected input tensor to be on GPU"; the kernels it calls have no CPU
    version in torch 2.14), so on CPUs each process normalises its own B / world images, and rank
    0's running statistics are broadcast after every epoch (``_broadcast_buffers``).
    """
    return device.type == "cuda"


def _broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every process, so that every process
    extracts its shard with the same network. (DDP broadcasts them before each forward pass, but
    the last training step leaves each process with its own; with SyncBatchNorm they agree.)"""
    broadcast_from_rank0(list(model.buffers()))


def mean_over_processes(fabric: Fabric, total: float, count: int) -> float:
    """The mean of a per-sample quantity summed to ``total`` over ``count`` samples on each
    process, over all processes' samples (nan for none)."""
    if fabric.world_size > 1:
        total, count = fabric.all_reduce(torch.tensor([total, count], dtype=torch.float64),
                                         reduce_op="sum").tolist()
    return total / count if count else float("nan")


def seed_process_stream(config: PretrainConfig, epoch: int, rank: int) -> None:
    """After the epoch's common seeding: each process other than rank 0 its own random stream
    (augmentation, dropout); rank 0 keeps the single-process one."""
    if rank > 0:
        torch.manual_seed(int(np.random.SeedSequence([config.seed, epoch + 1, rank])
                              .generate_state(1)[0]))


def _check_resumable(saved: PretrainConfig, config: PretrainConfig, path) -> None:
    changed = [name for name, value in config.to_dict().items()
               if name not in RESUMABLE_CHANGES and saved.to_dict()[name] != value]
    if changed:
        details = ", ".join(f"{n}: {saved.to_dict()[n]!r} -> {config.to_dict()[n]!r}" for n in changed)
        raise ValueError(f"cannot resume from {path}: the config differs ({details})")


def _epoch_row(epoch: int, loss: float | None, clustering: ClusteringResult,
               previous: np.ndarray | None, labels: np.ndarray | None, extract_seconds: float,
               train_seconds: float, lr: float) -> dict[str, Any]:
    sizes = clustering.sizes
    return {
        "epoch": epoch,
        "loss": float("nan") if loss is None else loss,
        "nmi_previous": float("nan") if previous is None else nmi(previous, clustering.assignments),
        "nmi_labels": float("nan") if labels is None else nmi(labels, clustering.assignments),
        "empty_clusters": clustering.num_empty,
        "smallest_cluster": int(sizes[sizes > 0].min()),
        "largest_cluster": int(sizes.max()),
        "lr": lr,
        "extract_s": extract_seconds,
        "cluster_s": clustering.seconds,
        "train_s": train_seconds,
    }


def _save(path: Path, model: DeepClusterModel, optimizer, config: PretrainConfig, epoch: int,
          assignments: np.ndarray) -> Path:
    return save_epoch_checkpoint({
        "config": config.to_dict(),
        "epoch": epoch,
        "backbone": model.backbone.state_dict(),
        "head": model.head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "assignments": torch.from_numpy(assignments.astype(np.int64)),
        "rng": torch.get_rng_state(),
    }, path, config.keep_every)


def _log(fabric: Fabric, row: dict[str, Any], history: list, out: Path, assignments) -> None:
    history.append(row)
    if not fabric.is_global_zero:  # every process has the same row; rank 0 writes it
        return
    save_npy(assignments.astype(np.int32), out / "assignments" / f"epoch_{row['epoch']:03d}.npy")
    fabric.log_dict({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
    for logger in fabric.loggers:
        logger.save()
    console.print(_format_row(row))


COLUMNS = ("epoch", "loss", "nmi_previous", "nmi_labels", "empty_clusters", "smallest_cluster",
           "largest_cluster", "extract_s", "cluster_s", "train_s")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _format_row(row: dict[str, Any]) -> str:
    f = {name: _fmt(value) for name, value in row.items()}
    return (f"epoch {f['epoch']}: loss {f['loss']} | NMI previous {f['nmi_previous']} labels "
            f"{f['nmi_labels']} | clusters: {f['empty_clusters']} empty, sizes "
            f"{f['smallest_cluster']}-{f['largest_cluster']} | seconds: extract {f['extract_s']} "
            f"cluster {f['cluster_s']} train {f['train_s']}")


def history_table(history: list[dict[str, Any]]) -> Table:
    table = Table(title="DeepCluster pretraining")
    for name in COLUMNS:
        table.add_column(name, justify="right")
    for row in history:
        table.add_row(*(_fmt(row[name]) for name in COLUMNS))
    return table
