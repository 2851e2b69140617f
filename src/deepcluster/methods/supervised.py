"""The supervised baseline as a method of the engine: the same network trained with cross-entropy
on the true labels (its pretraining augmentation, SGD, a per-epoch cosine schedule by default),
so that every benchmark can show what labels reach beside the self-supervised rows."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data import ArrayImageDataset
from ..models import DeepClusterModel, build_backbone
from ..sampler import shuffled_order
from ..transforms import ChannelsLast, is_small, training_pipeline
from .base import Method, Refresh, RunContext, TrainingData


class Supervised(Method):
    name = "supervised"
    title = "supervised baseline"

    def training_data(self) -> TrainingData:
        config = self.config
        images = self.training_images()
        if images.targets is None:
            raise ValueError(f"data={config.data!r} has no labels; the supervised baseline needs them")
        self.labels = np.asarray(images.targets, dtype=np.int64)
        self.classes = max(len(images.classes), int(self.labels.max()) + 1)
        in_memory = isinstance(images, ArrayImageDataset) and is_small(config.image_size)
        pipeline = training_pipeline(config.augmentation, config.image_size, in_memory,
                                     config.crop_min_scale)
        batch_transform = pipeline.batch
        if config.channels_last:
            batch_transform = nn.Sequential(batch_transform, ChannelsLast())
        self.targets = torch.from_numpy(self.labels).to(self.fabric.device)
        return TrainingData(images.with_transform(pipeline.sample), batch_transform, self.labels)

    def build_model(self) -> nn.Module:
        self.model = DeepClusterModel(build_backbone(self.config.arch, self.config.sobel),
                                      self.classes)
        return self.model

    def initial_targets(self, run: RunContext) -> None:
        return None  # the labels: nothing to compute, no row for epoch 0

    def epoch_order(self, epoch: int, world: int) -> Sequence[int]:
        return shuffled_order(len(self.labels), self.config.seed + epoch + 1, world)

    def loss(self, model: nn.Module, inputs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(inputs), self.targets[indices])

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.model.head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.head.load_state_dict(state["head"])
