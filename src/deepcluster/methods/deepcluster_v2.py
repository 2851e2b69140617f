"""DeepCluster-v2 (Caron et al., 2020, the SwAV paper's appendix) as a method of the engine: the
v1 idea with a projection head, prototypes, multi-crop and no extraction pass.

  1. the memory bank holds the L2-normalised embedding of every image's large crops from the
     last training pass (or from one first pass before epoch 1); ``prototype_sets`` spherical
     k-means runs of k clusters on it give fixed prototypes (the normalised centroids) and the
     targets (the cluster ids);
  2. each epoch trains backbone and projector on multi-crop views: the cross-entropy of the
     softmax of embedding-prototype similarities at ``temperature`` against the image's cluster
     id, averaged over all views and prototype sets; every large crop's embedding is written
     into the memory bank at the image's index (so the bank is in dataset order);
  3. the learning rate follows the run's schedule every step (the preset: warm-up, then cosine).

Three settings leave SwAV's recipe for short runs on small images (``docs/v2_comparison.md``):
``bank="clean"`` fills the bank before every clustering from one pass over the images without
augmentation, in eval mode, instead of from the training pass; ``first_targets="backbone"``
takes the first epoch's targets from v1's clustering of the untrained backbone's PCA-whitened
features, with the clusters' mean embeddings as prototypes (the projector's embeddings of the
features that clustering extracted, so it needs no pass of its own); ``bank="backbone"`` does so
before every epoch (one extraction pass each; the preset's), so that the targets come from the
space the benchmarks judge: at 28 px the projector's embedding has a k-NN 1.5-2 points below the
backbone's at every epoch (docs/study.md, session 19). The backbone's clustering runs one k-means
of the extracted features per prototype set, as the bank's does. ``sampling="clusters"`` (off in
the preset: level over 3 seeds, session 24) trains on v1's order, as many images from every
cluster of the first set. ``k_factor`` gives the sets more clusters one after the other
(set s has k x k_factor^s; SwAV gives every set k, the preset 100 / 300 / 900).

The prototypes are never trained; an empty cluster keeps its previous centroid. Checkpoints have
the same ``backbone`` and ``config`` as v1, so every benchmark reads them unchanged. Across
processes every process writes the rows of its share of the images, the rows are all-gathered
after each pass, every process clusters the same bank and rank 0's prototypes and ids are
broadcast, so that they are bitwise the same everywhere.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..clustering import ClusteringResult, check_k, torch_kmeans
from ..data import ArrayImageDataset
from ..distributed import all_gather_columns, broadcast_from_rank0, gather_rows, is_distributed
from ..features import extract_global
from ..models import Backbone, build_backbone
from ..sampler import cluster_balanced_order, padded_length, process_share, shuffled_order
from ..transforms import ChannelsLast, PerView, extraction_set, is_small, multicrop_pipeline
from .base import Method, Refresh, RunContext, TrainingData, check_finite
from .deepcluster import cluster_backbone, clustering_refresh


class DeepClusterV2Model(nn.Module):
    """Backbone, projection MLP to an L2-normalised embedding, and frozen prototype sets."""

    def __init__(self, backbone: Backbone, hidden: int, dim: int, set_sizes: Sequence[int]):
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(nn.Linear(backbone.feature_dim, hidden),
                                       nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, dim))
        # Buffers, not parameters: the prototypes are k-means centroids, never trained. One
        # tensor for all sets: set s uses its first set_sizes[s] rows.
        self.set_sizes = list(set_sizes)
        prototypes = torch.randn(len(self.set_sizes), max(self.set_sizes), dim)
        self.register_buffer("prototypes", nn.functional.normalize(prototypes, dim=2))

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        return self.embed(views)

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

    def prototype_sets(self) -> list[torch.Tensor]:
        """Each set's prototypes, (set_sizes[s], dim)."""
        return [set_prototypes[:k] for set_prototypes, k in zip(self.prototypes, self.set_sizes)]


def set_sizes(k: int, sets: int, k_factor: float) -> list[int]:
    """The number of clusters of each prototype set: k x k_factor^s for set s."""
    return [round(k * k_factor ** s) for s in range(sets)]


def cluster_memory(memory: torch.Tensor, sizes: Sequence[int], iterations: int, seed: int
                   ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Set ``s`` clusters memory bank ``s mod banks`` into ``sizes[s]`` clusters (spherical
    k-means, seed ``seed * 1000 + s``): (assignments (sets, N), each set's prototypes
    (sizes[s], dim))."""
    results = [torch_kmeans(memory[s % len(memory)], k, iterations, seed * 1000 + s,
                            distributed=False, spherical=True) for s, k in enumerate(sizes)]
    return torch.stack([a for a, _, _ in results]), [c for _, c, _ in results]


def swapped_loss(embeddings: torch.Tensor, prototypes: Sequence[torch.Tensor],
                 targets: torch.Tensor, views: int, temperature: float) -> torch.Tensor:
    """Cross-entropy of every view's prototype scores against its image's cluster id, averaged
    over prototype sets. ``embeddings`` is (views * B, dim), view after view; ``prototypes`` is
    each set's (k_s, dim); ``targets`` is (sets, B)."""
    loss = embeddings.new_zeros(())
    for set_prototypes, set_targets in zip(prototypes, targets):
        scores = embeddings @ set_prototypes.T / temperature
        loss = loss + nn.functional.cross_entropy(scores, set_targets.repeat(views))
    return loss / len(prototypes)


class DeepClusterV2(Method):
    name = "deepcluster-v2"
    title = "DeepCluster-v2 pretraining"
    assignments: np.ndarray | None = None  # the first set's ids of the last clustering

    def training_data(self) -> TrainingData:
        config = self.config
        images = self.training_images()
        check_k(len(images), config.k)
        largest = max(set_sizes(config.k, config.prototype_sets, config.k_factor))
        if largest > len(images):
            raise ValueError(f"k_factor={config.k_factor} gives the last prototype set {largest} "
                             f"clusters, more than the {len(images)} images to cluster")
        world = self.fabric.world_size
        if (padded_length(len(images), world) // world) % (config.batch_size // world) == 1:
            raise ValueError(f"{len(images)} images in batches of batch_size={config.batch_size} "
                             "leave a last batch of one image per process, which BatchNorm cannot "
                             "train on; change batch_size or subset")
        in_memory = isinstance(images, ArrayImageDataset) and is_small(config.image_size)
        pipeline = multicrop_pipeline(config.image_size, config.large_crops, config.small_crops,
                                      config.small_crop_size, in_memory, config.crop_min_scale,
                                      config.small_crop_min_scale, config.small_crop_max_scale)
        batch_transform = pipeline.batch
        if config.channels_last:
            batch_transform = nn.Sequential(batch_transform, PerView(ChannelsLast()))
        self.memory = torch.zeros(config.large_crops, len(images), config.projection_dim)
        self.eval_set, eval_batch = extraction_set(images, config.image_size, config.channels_last)
        self.eval_batch = eval_batch.to(self.fabric.device)
        return TrainingData(images.with_transform(pipeline.sample), batch_transform,
                            images.targets)

    def build_model(self) -> nn.Module:
        config = self.config
        self.model = DeepClusterV2Model(build_backbone(config.arch, config.sobel),
                                        config.projection_hidden, config.projection_dim,
                                        set_sizes(config.k, config.prototype_sets,
                                                  config.k_factor))
        return self.model

    def initial_targets(self, run: RunContext) -> Refresh:
        """The untrained network's bank (one pass of augmented crops in train mode, as SwAV, or
        a clean pass), clustered; or v1's clustering of the backbone (``first_targets`` or
        ``bank="backbone"``)."""
        self.assignments = None
        if self.config.first_targets == "backbone" or self.config.bank == "backbone":
            return self.start_from_backbone(run, self.config.seed)
        seconds = 0.0
        if self.config.bank == "training":
            order = shuffled_order(self.memory.shape[1], self.config.seed, self.fabric.world_size)
            seconds = run.forward_pass(order, self.remember)
            self.after_pass(order, self.fabric.world_size)
        refresh = self.refresh_targets(run, 0)
        refresh.seconds["train_s"] = seconds
        return refresh

    def start_from_backbone(self, run: RunContext, seed: int) -> Refresh:
        """v1's clustering of the backbone, one k-means per prototype set of the same features
        (set s with seed ``seed + 1000 s``, so set 0's is v1's with ``seed``); the bank the
        prototypes are averaged from holds the projector's embeddings (train mode) of the features
        that clustering extracted, so that no second pass over the images is needed (a clean bank
        is filled by its own)."""
        projected: list[torch.Tensor] = []

        def project(features: torch.Tensor, labels: torch.Tensor) -> None:
            projected.append(nn.functional.normalize(self.model.projector(features), dim=1).cpu())
            if run.feature_sink is not None:
                run.feature_sink(features, labels)

        banked = self.config.bank != "clean"
        self.model.projector.train()
        seeds = [seed + 1000 * s for s in range(self.config.prototype_sets)]
        clusterings, extract_s = cluster_backbone(
            self.model.backbone, self.eval_set, self.eval_batch, self.config, self.fabric,
            seeds, feature_sink=project if banked else run.feature_sink,
            ks=self.model.set_sizes)
        if banked:
            self.memory[:] = torch.from_numpy(gather_rows(torch.cat(projected).float().numpy()))
        return self.start_from(clusterings, extract_s, run)

    def start_from(self, clusterings: Sequence[ClusteringResult], extract_s: float,
                   run: RunContext) -> Refresh:
        """Set s's targets are ``clusterings[s]``'s ids and its prototypes the normalised mean of
        each of its clusters' embeddings in bank s mod banks (an empty cluster keeps its random
        prototype); the first clustering stands for the epoch in the log."""
        if self.config.bank == "clean":
            extract_s += self.embed_clean()
        ids = torch.stack([torch.from_numpy(c.assignments.astype(np.int64)) for c in clusterings])
        prototypes = self.model.prototypes.detach().cpu().clone()
        for s, k in enumerate(self.model.set_sizes):
            filled = torch.bincount(ids[s], minlength=k) > 0
            bank = self.memory[s % len(self.memory)]
            sums = torch.zeros_like(prototypes[s, :k]).index_add_(0, ids[s], bank)
            prototypes[s, :k][filled] = nn.functional.normalize(sums[filled], dim=1)
        self.model.prototypes.copy_(prototypes)
        refresh = clustering_refresh(clusterings[0], self.assignments, run.data.labels,
                                     extract_s=extract_s)
        refresh.seconds["cluster_s"] = sum(clustering.seconds for clustering in clusterings)
        self.set_assignments(ids)
        return refresh

    def embed_clean(self) -> float:
        """Fill every bank with each image's embedding without augmentation (eval mode); the
        seconds it took."""
        start = time.perf_counter()
        embed = nn.Sequential(self.model.backbone, self.model.projector)
        with self.fabric.autocast():
            embeddings, _ = extract_global(embed, self.eval_set, self.config.extract_batch_size,
                                           self.config.workers, self.fabric.device,
                                           progress=self.fabric.is_global_zero,
                                           batch_transform=self.eval_batch,
                                           shard=is_distributed())
        embeddings = torch.from_numpy(gather_rows(embeddings))
        self.memory[:] = nn.functional.normalize(embeddings, dim=1)
        return time.perf_counter() - start

    def epoch_order(self, epoch: int, world: int) -> Sequence[int]:
        """Every image once, shuffled; with ``sampling="clusters"``, v1's order instead: as many
        images from every cluster of the first set (a large cluster weighs no more than a small
        one in the epoch)."""
        if self.config.sampling == "clusters":
            return cluster_balanced_order(self.assignments, self.config.seed + epoch, world)
        return shuffled_order(self.memory.shape[1], self.config.seed + epoch + 1, world)

    def remember(self, model: nn.Module, views: list[torch.Tensor],
                 indices: torch.Tensor) -> torch.Tensor:
        """The embeddings of a batch's views; the large crops' go into the memory bank."""
        embeddings = model(views)
        large, batch = len(self.memory), len(indices)
        self.memory[:, indices.cpu()] = (embeddings[:large * batch].detach()
                                         .view(large, batch, -1).to(self.memory))
        return embeddings

    def loss(self, model: nn.Module, views: list[torch.Tensor],
             indices: torch.Tensor) -> torch.Tensor:
        # A clean bank is refilled before every clustering: the training pass need not write it.
        banked = self.config.bank == "training"
        embeddings = self.remember(model, views, indices) if banked else model(views)
        return swapped_loss(embeddings, self.model.prototype_sets(), self.targets[:, indices],
                            len(views), self.config.temperature)

    def after_pass(self, order: Sequence[int], world: int) -> None:
        """Every process's bank rows of the pass, on every process."""
        if self.config.bank == "training":
            all_gather_columns(self.memory,
                               [list(process_share(order, r, world)) for r in range(world)])

    def refresh_targets(self, run: RunContext, epoch: int) -> Refresh:
        """Cluster the memory bank (seed of ``epoch``), or the backbone (``bank="backbone"``);
        the first set stands for the epoch in the log (extract_s: the clean pass, 0 without
        one)."""
        if self.config.bank == "backbone":
            return self.start_from_backbone(run, self.config.seed + epoch)
        extract_s = self.embed_clean() if self.config.bank == "clean" else 0.0
        start = time.perf_counter()
        check_finite(self.memory, "the memory bank's embeddings")
        assignments, prototypes = cluster_memory(self.memory.to(self.fabric.device),
                                                 self.model.set_sizes, self.config.kmeans_iters,
                                                 self.config.seed + epoch)
        broadcast_from_rank0((assignments, *prototypes))
        for set_prototypes, centroids in zip(self.model.prototype_sets(), prototypes):
            set_prototypes.copy_(centroids)
        first = ClusteringResult(assignments[0].cpu().numpy(), prototypes[0].cpu().numpy(),
                                 float("nan"), time.perf_counter() - start)
        refresh = clustering_refresh(first, self.assignments, run.data.labels, extract_s=extract_s)
        self.set_assignments(assignments)
        return refresh

    def set_assignments(self, assignments: torch.Tensor) -> None:
        self.assignments = assignments[0].cpu().numpy()
        self.all_assignments = assignments.cpu()
        self.targets = assignments.to(self.fabric.device)

    def state_dict(self) -> dict[str, Any]:
        return {"projector": self.model.projector.state_dict(),
                "prototypes": self.model.prototypes.detach().cpu(), "memory": self.memory,
                "assignments": self.all_assignments}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.projector.load_state_dict(state["projector"])
        self.model.prototypes.copy_(state["prototypes"])
        self.memory = state["memory"]
        self.set_assignments(state["assignments"])
