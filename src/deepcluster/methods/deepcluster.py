"""DeepCluster (Caron et al., 2018) as a method of the training engine.

Before the first epoch and after each one, the whole training set is clustered:
  1. extract the backbone's global feature of every image (eval mode, no augmentation);
  2. PCA-whiten to ``pca_dim`` dimensions and L2-normalise;
  3. k-means with a new seed each time; the cluster ids become the pseudo-labels.
Each epoch then:
  4. samples the same number of images from every non-empty cluster;
  5. re-initialises the linear head (which has no momentum);
  6. trains backbone and head with cross-entropy on the pseudo-labels, with augmentation
     (with ``small_crops``, also on small crops of each image: SwAV's multi-crop).

Across processes (the engine shards step 4's order and averages the gradients), step 1 extracts
each process's contiguous shard, the streaming PCA's sums are all-reduced, and step 3 runs either
on rank 0 (faiss; the assignments are broadcast) or as a distributed torch k-means over the shards
(the assignments all-gathered): every process holds the same N assignments. Step 5 uses the
epoch's common seed, so every process draws the same head.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import nn

from ..clustering import (ClusteringResult, centroid_distances, check_k, cluster_features,
                          cluster_whitened, nmi)
from ..config import PretrainConfig
from ..data import ArrayImageDataset, ImageFileDataset
from ..device_decode import DecodeOnDevice, collate_encoded
from ..distributed import is_distributed
from ..features import extract_global, extract_whitened
from ..models import DeepClusterModel, build_backbone, reset_head
from ..sampler import cluster_balanced_order
from ..sharded_clustering import cluster_shards
from ..transforms import (ChannelsLast, PerView, Pipeline, device_decode_pipeline,
                          extraction_pipeline, is_small, multicrop_pipeline, training_pipeline)
from .base import Method, Refresh, RunContext, TrainingData, check_finite


class DeepCluster(Method):
    name = "deepcluster"
    title = "DeepCluster pretraining"

    def training_data(self) -> TrainingData:
        config = self.config
        images = self.training_images()
        check_k(len(images), config.k)
        if config.decode_on_device:
            train, extract, collate = self._decoded_on_device(images)
        else:
            # Small images held in memory are augmented a whole batch at a time (much faster).
            in_memory = isinstance(images, ArrayImageDataset) and is_small(config.image_size)
            pipeline = self._training_pipeline(in_memory)
            extraction = extraction_pipeline(config.image_size, in_memory)
            train = (images.with_transform(pipeline.sample), pipeline.batch)
            extract = (images.with_transform(extraction.sample), extraction.batch)
            collate = None
        if config.channels_last:
            layout = PerView(ChannelsLast()) if config.small_crops else ChannelsLast()
            train = (train[0], nn.Sequential(train[1], layout))
            extract = (extract[0], nn.Sequential(extract[1], ChannelsLast()))
        self.eval_set, self.eval_batch = extract[0], extract[1].to(self.fabric.device)
        self.collate = collate
        return TrainingData(train[0], train[1], images.targets, collate)

    def _training_pipeline(self, in_memory: bool) -> Pipeline:
        """The augmentation; with small crops, SwAV's multi-crop: one view of the strong
        augmentation (its crop is multi-crop's large view) and ``small_crops`` small views."""
        config = self.config
        if not config.small_crops:
            return training_pipeline(config.augmentation, config.image_size, in_memory,
                                     config.crop_min_scale)
        if config.augmentation != "strong":
            raise ValueError(f"small_crops={config.small_crops} adds small views to the strong "
                             f"augmentation's view; augmentation={config.augmentation!r} is not "
                             "'strong'")
        return multicrop_pipeline(config.image_size, 1, config.small_crops,
                                  config.small_crop_size, in_memory, config.crop_min_scale,
                                  config.small_crop_min_scale, config.small_crop_max_scale)

    def _decoded_on_device(self, images) -> tuple[tuple, tuple, Any]:
        """The files' bytes for the loader; decoding, crops and augmentation on the device."""
        if self.config.small_crops:
            raise ValueError("decode_on_device makes one view per image; small_crops must be 0")
        if not isinstance(images, ImageFileDataset):
            raise ValueError(f"decode_on_device reads image files; data={self.config.data!r} is "
                             "held in memory (pass a folder or list file of JPEGs)")
        encoded = images.as_encoded()
        train = device_decode_pipeline(self.config.augmentation, self.config.image_size,
                                       self.config.crop_min_scale)
        extract = device_decode_pipeline(None, self.config.image_size)
        return ((encoded, DecodeOnDevice(train.sample, train.batch)),
                (encoded, DecodeOnDevice(extract.sample, extract.batch)), collate_encoded)

    def build_model(self) -> nn.Module:
        self.model = DeepClusterModel(build_backbone(self.config.arch, self.config.sobel),
                                      self.config.k, self.config.head_hidden,
                                      self.config.head_layers)
        return self.model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Momentum for the backbone (and the hidden layer); the head, re-initialised every
        epoch, gets none. With ``layer_lr_decay`` below 1, stage i of the backbone's five trains
        at lr x decay^(5 - i): the early stages stay nearer their initialisation."""
        momentum = self.config.momentum
        head = {"params": model.head.parameters(), "momentum": 0.0}
        if self.config.layer_lr_decay == 1.0:
            kept = [*model.backbone.parameters(), *model.hidden.parameters()]
            return [{"params": trainable(kept), "momentum": momentum}, head]
        stages = model.backbone.stages
        staged = {id(p) for p in stages.parameters()}
        top = [p for p in [*model.backbone.parameters(), *model.hidden.parameters()]
               if id(p) not in staged]
        groups = [{"params": trainable(stage.parameters()), "momentum": momentum,
                   "lr_scale": self.config.layer_lr_decay ** (len(stages) - 1 - index)}
                  for index, stage in enumerate(stages)]
        return [*groups, {"params": trainable(top), "momentum": momentum}, head]

    def initial_targets(self, run: RunContext) -> Refresh:
        self.assignments = None
        return self.refresh_targets(run, 0)

    def before_epoch(self, epoch: int) -> None:
        if self.config.reset_head:
            reset_head(self.model.head)

    def epoch_order(self, epoch: int, world: int) -> Sequence[int]:
        return cluster_balanced_order(self.assignments, self.config.seed + epoch, world)

    def loss(self, model: nn.Module, inputs: torch.Tensor | list[torch.Tensor],
             indices: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the pseudo-labels; with multi-crop, its mean over the views (each
        view of its own size, so one forward pass each)."""
        targets = self.targets[indices]
        if isinstance(inputs, torch.Tensor):
            return nn.functional.cross_entropy(model(inputs), targets)
        return sum(nn.functional.cross_entropy(model(view), targets) for view in inputs) / len(inputs)

    def refresh_targets(self, run: RunContext, epoch: int) -> Refresh:
        """Steps 1-3 with the seed of ``epoch`` (0: the untrained network)."""
        clustering, extract_seconds = self.cluster(seed=self.config.seed + epoch,
                                                   feature_sink=run.feature_sink)
        refresh = clustering_refresh(clustering, self.assignments, run.data.labels,
                                     extract_s=extract_seconds)
        self.set_assignments(clustering.assignments)
        return refresh

    def set_assignments(self, assignments: np.ndarray) -> None:
        self.assignments = assignments
        self.targets = torch.from_numpy(assignments.astype(np.int64)).to(self.fabric.device)

    def cluster(self, seed: int, feature_sink=None) -> tuple[ClusteringResult, float]:
        """Steps 1-3 on the current backbone (``cluster_backbone``)."""
        [clustering], extract_seconds = cluster_backbone(
            self.model.backbone, self.eval_set, self.eval_batch, self.config, self.fabric, [seed],
            self.collate, feature_sink)
        return clustering, extract_seconds

    def state_dict(self) -> dict[str, Any]:
        hidden = {"hidden": self.model.hidden.state_dict()} if self.config.head_hidden else {}
        return {"head": self.model.head.state_dict(), **hidden,
                "assignments": torch.from_numpy(self.assignments.astype(np.int64))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.head.load_state_dict(state["head"])
        if self.config.head_hidden:
            self.model.hidden.load_state_dict(state["hidden"])
        self.set_assignments(state["assignments"].numpy())


def trainable(parameters: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters an optimiser steps (the Sobel filter, for one, is frozen)."""
    return [p for p in parameters if p.requires_grad]


def clustering_refresh(clustering: ClusteringResult, previous: np.ndarray | None,
                       labels: np.ndarray | None, extract_s: float) -> Refresh:
    """A clustering's row: NMI with the previous one and with the labels, cluster sizes, seconds."""
    sizes = clustering.sizes
    return Refresh(
        stats={"nmi_previous": float("nan") if previous is None else nmi(previous, clustering.assignments),
               "nmi_labels": float("nan") if labels is None else nmi(labels, clustering.assignments),
               "empty_clusters": clustering.num_empty,
               "smallest_cluster": int(sizes[sizes > 0].min()),
               "largest_cluster": int(sizes.max())},
        seconds={"extract_s": extract_s, "cluster_s": clustering.seconds},
        assignments=clustering.assignments, distances=clustering.distances)


def cluster_backbone(backbone: nn.Module, images, batch_transform: nn.Module,
                     config: PretrainConfig, fabric: Fabric, seeds: Sequence[int], collate=None,
                     feature_sink=None, ks: Sequence[int] | None = None
                     ) -> tuple[list[ClusteringResult], float]:
    """Extract the backbone's global features of ``images`` (eval mode, ``batch_transform`` on
    every batch), PCA-whiten, then one k-means per seed of ``seeds``, of ``ks[i]`` clusters for
    seed i (default: ``config.k`` for all): every process gets the same N ids of each. Returns the
    clusterings and the extraction seconds (with ``streaming_pca``, the PCA is fitted during
    extraction and counted in them). ``feature_sink``: gets every extracted batch
    (``RunContext.feature_sink``)."""
    sharded = is_distributed()
    options = dict(batch_size=config.extract_batch_size, workers=config.workers,
                   device=fabric.device, progress=fabric.is_global_zero,
                   batch_transform=batch_transform, shard=sharded, collate=collate,
                   feature_sink=feature_sink)
    start = time.perf_counter()
    with fabric.autocast():  # the training precision (bf16-mixed: bf16 convolutions)
        if config.streaming_pca:
            features = extract_whitened(backbone, images, config.pca_dim,
                                        memory_budget=int(config.feature_memory_gb * 2**30),
                                        **options)
        else:
            features, _ = extract_global(backbone, images, **options)
    if sharded:
        fabric.barrier()  # the extraction time of the slowest process
    extract_seconds = time.perf_counter() - start
    check_finite(features, "the features of the extraction pass")
    ks = ks or [config.k] * len(seeds)
    clusterings = [cluster_extracted(features, len(images), config.override(k=k), seed)
                   for seed, k in zip(seeds, ks, strict=True)]
    if config.streaming_pca and not sharded:
        # The clustered features (whitened and normalised in place) are at hand only here: the
        # run report ranks each cluster's members by these distances instead of extracting
        # again. The first clustering is the one the run logs and reports.
        first = clusterings[0]
        first.distances = centroid_distances(features, first.assignments, first.centroids)
    return clusterings, extract_seconds


def cluster_extracted(features: np.ndarray, num: int, config: PretrainConfig,
                      seed: int) -> ClusteringResult:
    """Steps 2-3 on ``cluster_backbone``'s features (this process's shard of ``num`` rows when
    distributed; already whitened with ``streaming_pca``, which this normalises in place)."""
    if is_distributed():
        return cluster_shards(features, num, config, seed)
    if not config.streaming_pca:
        return cluster_features(features, config.k, config.pca_dim, config.kmeans_iters, seed,
                                config.kmeans_backend)
    return cluster_whitened(features, config.k, config.kmeans_iters, seed,
                            config.kmeans_backend, copy=False)
