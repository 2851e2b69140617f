"""DeepCluster-v2 (Caron et al., 2020, the SwAV paper's appendix): the v1 idea with a projection
head, prototypes, multi-crop and no extraction pass.

Each epoch:
  1. cluster the memory bank, which holds the L2-normalised 128-d embedding of every image's large
     crops from the previous epoch's training pass (or from one initial pass before the first
     epoch), with ``prototype_sets`` spherical k-means runs of k clusters; the normalised
     centroids become fixed prototypes and the cluster ids the targets;
  2. train backbone and projector on multi-crop views: the cross-entropy of the softmax of
     embedding-prototype similarities at ``temperature`` against the image's cluster id, averaged
     over all views and all prototype sets; every large crop's embedding is written into the
     memory bank at the image's index (so the bank is in dataset order);
  3. a cosine learning-rate schedule with linear warm-up, stepped every batch.

The prototypes are never trained; an empty cluster keeps its previous centroid. Checkpoints have
the same ``backbone`` and ``config`` as v1, so every benchmark reads them unchanged.

On several processes (``devices=N`` or torchrun, DDP as in v1) every process draws the same
shuffled order of the images and takes every world_size-th one (so one step's local batches
together are the batch one process would take); after each pass the processes all-gather the
memory-bank rows they wrote, every process clusters the same bank, and rank 0's prototypes and
ids are broadcast so that they are bitwise the same everywhere.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import load_checkpoint, save_epoch_checkpoint
from .clustering import ClusteringResult, check_k
from .config import PretrainConfig
from .data import ArrayImageDataset, load_dataset
from .distributed import broadcast_from_rank0, comm_device
from .features import split_batch_transform
from .models import Backbone, build_backbone
# v1's loop pieces that v2 shares (pretrain.py imports this module only inside pretrain()).
from .pretrain import (PretrainResult, PseudoLabelled, _broadcast_buffers, _check_resumable,
                       _epoch_row, _local_batch_size, _log, finish, mean_over_processes,
                       prepare_model, seed_process_stream, start_processes)
from .report import progress_bar
from .sampler import padded_length, shuffled_order
from .transforms import ChannelsLast, PerView, is_small, multicrop_pipeline


class DeepClusterV2Model(nn.Module):
    """Backbone, projection MLP to an L2-normalised embedding, and frozen prototype sets."""

    def __init__(self, backbone: Backbone, hidden: int, dim: int, sets: int, k: int):
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(nn.Linear(backbone.feature_dim, hidden),
                                       nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, dim))
        # Buffers, not parameters: the prototypes are k-means centroids, never trained.
        self.register_buffer("prototypes", nn.functional.normalize(torch.randn(sets, k, dim), dim=2))

    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Embeddings of all views, concatenated view after view; views of one size share a
        forward pass."""
        outputs, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            outputs.append(self.projector(self.backbone(torch.cat(views[start:end]))))
            start = end
        return nn.functional.normalize(torch.cat(outputs).float(), dim=1)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        return self.embed(views)


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, k: int, iterations: int = 10, seed: int = 0,
                     init: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of L2-normalised rows by cosine similarity; returns (assignments, centroids).

    The centroids start at ``init`` or at k random rows, and are the L2-normalised means of their
    members; a cluster that loses all its members keeps its previous centroid. The last step is
    an update, so the returned centroids are exactly the normalised means of the returned
    clusters (or the kept centroid of an empty one).
    """
    check_k(len(x), k)
    if init is None:
        generator = torch.Generator().manual_seed(seed)
        init = x[torch.randperm(len(x), generator=generator)[:k].to(x.device)]
    centroids = init.clone()
    for _ in range(max(1, iterations)):
        assignments = (x @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
        counts = torch.bincount(assignments, minlength=k)
        non_empty = counts > 0
        centroids[non_empty] = nn.functional.normalize(sums[non_empty], dim=1)
    return assignments, centroids


def cluster_memory(memory: torch.Tensor, k: int, sets: int, iterations: int, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Set ``s`` clusters memory bank ``s mod banks``: (assignments (sets, N), prototypes
    (sets, k, dim))."""
    results = [spherical_kmeans(memory[s % len(memory)], k, iterations, seed * 1000 + s)
               for s in range(sets)]
    return torch.stack([a for a, _ in results]), torch.stack([c for _, c in results])


def swapped_loss(embeddings: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor,
                 views: int, temperature: float) -> torch.Tensor:
    """Cross-entropy of every view's prototype scores against its image's cluster id, averaged
    over prototype sets. ``embeddings`` is (views * B, dim), view after view; ``targets`` is
    (sets, B)."""
    loss = embeddings.new_zeros(())
    for set_prototypes, set_targets in zip(prototypes, targets):
        scores = embeddings @ set_prototypes.T / temperature
        loss = loss + nn.functional.cross_entropy(scores, set_targets.repeat(views))
    return loss / len(prototypes)


def scheduled_lr(config: PretrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs``, then constant or cosine decay to zero."""
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - warmup) / max(1, config.epochs * steps_per_epoch - warmup)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * progress))


def train_one_epoch(fabric: Fabric, model: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: DataLoader, batch_transform: nn.Module, memory: torch.Tensor,
                    targets: torch.Tensor | None, prototypes: torch.Tensor | None,
                    config: PretrainConfig, first_step: int, desc: str) -> float:
    """One pass over ``loader``: trains on the prototype targets (unless ``targets`` is None: the
    initial pass that only fills the memory bank) and writes each image's large-crop embeddings
    into ``memory`` at its index. Returns the mean loss (nan for the initial pass)."""
    model.train()
    large = len(memory)
    total, count = 0.0, 0
    bar = progress_bar(loader, desc, enabled=fabric.is_global_zero)
    for step, (views, indices) in enumerate(bar, start=first_step):
        with torch.no_grad():
            views = batch_transform(views)
        batch = len(indices)
        with torch.set_grad_enabled(targets is not None):
            embeddings = model(views)
        memory[:, indices] = embeddings[:large * batch].detach().view(large, batch, -1).to(memory)
        if targets is None:
            continue
        for group in optimizer.param_groups:
            group["lr"] = scheduled_lr(config, step, len(loader))
        loss = swapped_loss(embeddings, prototypes, targets[:, indices], len(views),
                            config.temperature)
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss)
        optimizer.step()
        total += loss.item() * batch
        count += batch
        bar.set_postfix(loss=f"{total / count:.3f}", refresh=False)
    return mean_over_processes(fabric, total, count)


def share_memory_rows(memory: torch.Tensor, orders: list[list[int]], rank: int) -> None:
    """After a pass on several processes: every process's memory-bank rows (process q wrote
    ``orders[q]``) on every process, by one all-gather."""
    device = comm_device()
    mine = memory[:, orders[rank]].to(device)
    parts = [torch.empty_like(mine) for _ in orders]
    dist.all_gather(parts, mine)
    for order, part in zip(orders, parts):
        memory[:, order] = part.to(memory.device)


def pretrain_v2(config: PretrainConfig, resume: str | Path | None = None, progress: bool = True):
    """Run DeepCluster-v2 with ``config``; same outputs as v1's ``pretrain``."""
    if config.decode_on_device:
        raise ValueError("decode_on_device is implemented for DeepCluster (v1) only; "
                         "DeepCluster-v2's multi-crop decodes in the loader workers")
    out = Path(config.out)
    fabric = start_processes(config, out)
    world, rank = fabric.world_size, fabric.global_rank
    local_batch = _local_batch_size(config.batch_size, world)

    images = load_dataset(config.data, "train", skip_unreadable=config.skip_unreadable)
    if config.subset:
        images = images.subset(config.subset)
    check_k(len(images), config.k)
    if (padded_length(len(images), world) // world) % local_batch == 1:
        raise ValueError(f"{len(images)} images in batches of batch_size={config.batch_size} leave "
                         "a last batch of one image per process, which BatchNorm cannot train "
                         "on; change batch_size or subset")
    in_memory = isinstance(images, ArrayImageDataset) and is_small(config.image_size)
    pipeline = multicrop_pipeline(config.image_size, config.large_crops, config.small_crops,
                                  config.small_crop_size, in_memory)
    batch_transform = pipeline.batch
    if config.channels_last:
        batch_transform = nn.Sequential(batch_transform, PerView(ChannelsLast()))
    batch_transform.to(fabric.device)
    # Each image's target is its own index: the memory bank's row.
    train_set = PseudoLabelled(images.with_transform(pipeline.sample), np.arange(len(images)))

    model = prepare_model(
        DeepClusterV2Model(build_backbone(config.arch, config.sobel), config.projection_hidden,
                           config.projection_dim, config.prototype_sets, config.k), config, fabric)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    memory = torch.zeros(config.large_crops, len(train_set), config.projection_dim)
    start_epoch = 0
    if resume is not None:
        state = load_checkpoint(resume)
        _check_resumable(PretrainConfig.from_dict(state["config"]), config, resume)
        model.load_state_dict({**{f"backbone.{k}": v for k, v in state["backbone"].items()},
                               **{f"projector.{k}": v for k, v in state["projector"].items()},
                               "prototypes": state["prototypes"]})
        optimizer.load_state_dict(state["optimizer"])
        memory = state["memory"]
        torch.set_rng_state(state["rng"])
        start_epoch = int(state["epoch"])
    fabric_model, optimizer = fabric.setup(model, optimizer)

    def one_pass(seed: int, targets, prototypes, first_step: int, desc: str) -> float:
        """A pass over this process's share of the images in the order drawn with ``seed``,
        then the memory-bank rows of every process on every process."""
        order = shuffled_order(len(train_set), seed, world)
        orders = [order[r::world] for r in range(world)]
        collate_fn, on_device = split_batch_transform(batch_transform, config.workers,
                                                      fabric.device)
        loader = fabric.setup_dataloaders(
            DataLoader(train_set, batch_size=local_batch, sampler=orders[rank],
                       num_workers=config.workers, collate_fn=collate_fn,
                       pin_memory=fabric.device.type == "cuda", drop_last=False),
            use_distributed_sampler=False)
        loss = train_one_epoch(fabric, fabric_model, optimizer, loader, on_device, memory,
                               targets, prototypes, config, first_step * len(loader), desc)
        if world > 1:
            share_memory_rows(memory, orders, rank)
            _broadcast_buffers(model)
        return loss

    labels = images.targets
    history: list[dict[str, Any]] = []
    checkpoint_path = out / "checkpoints" / "last.ckpt"
    loss, lr, train_seconds, previous = float("nan"), 0.0, 0.0, None
    if resume is None:
        start = time.perf_counter()
        one_pass(config.seed, None, None, 0, desc="fill memory")
        train_seconds = time.perf_counter() - start
    else:
        previous = state["assignments"][0].numpy()

    # Row e: the training pass of epoch e (none for e = 0: the initial fill) and the clustering
    # of the memory bank it filled, whose prototypes and ids epoch e + 1 trains on.
    for epoch in range(start_epoch, config.epochs + 1):
        start = time.perf_counter()
        assignments, prototypes = cluster_memory(memory.to(fabric.device), config.k,
                                                 config.prototype_sets, config.kmeans_iters,
                                                 config.seed + epoch)
        if world > 1:
            broadcast_from_rank0((assignments, prototypes))
        # The first prototype set's clustering stands for the epoch in the log (v1's columns;
        # no extraction pass, so extract_s is 0).
        clustering = ClusteringResult(assignments[0].cpu().numpy(), prototypes[0].cpu().numpy(),
                                      float("nan"), time.perf_counter() - start)
        if resume is None or epoch > start_epoch:  # a resumed run logged its last row already
            row = _epoch_row(epoch, loss, clustering, previous, labels, 0.0, train_seconds, lr)
            _log(fabric, row, history, out, clustering.assignments)
        if epoch == config.epochs:
            break
        model.prototypes.copy_(prototypes)
        torch.manual_seed(config.seed + epoch + 1)
        seed_process_stream(config, epoch, rank)
        start = time.perf_counter()
        loss = one_pass(config.seed + epoch + 1, assignments.to(fabric.device), model.prototypes,
                        epoch, desc=f"epoch {epoch + 1}/{config.epochs}")
        train_seconds = time.perf_counter() - start
        lr = optimizer.param_groups[0]["lr"]
        previous = clustering.assignments
        if fabric.is_global_zero:
            _save(checkpoint_path, model, optimizer, config, epoch + 1, memory, assignments)

    finish(fabric, history, progress)
    return PretrainResult(checkpoint_path, history, clustering.assignments)


def _save(path: Path, model: DeepClusterV2Model, optimizer, config: PretrainConfig, epoch: int,
          memory: torch.Tensor, assignments: torch.Tensor) -> Path:
    return save_epoch_checkpoint({
        "config": config.to_dict(),
        "epoch": epoch,
        "backbone": model.backbone.state_dict(),
        "projector": model.projector.state_dict(),
        "prototypes": model.prototypes,
        "optimizer": optimizer.state_dict(),
        "memory": memory,
        "assignments": assignments.cpu(),
        "rng": torch.get_rng_state(),
    }, path, config.keep_every)
