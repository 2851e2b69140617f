"""What a method tells the training engine; the engine (``engine.loop``) does everything else:
processes, seeding, the epoch loop, the loader, the optimiser steps, the learning rate, the
collectives around a pass, checkpoints, the history and resume.

A method is one subclass of ``Method`` in one module of this package, registered in
``methods.METHODS``. Its hooks, in the order the engine calls them:

- ``training_data()``: the training images and the batch transform (augmentation);
- ``build_model()`` and ``param_groups(model)`` (the optimiser is SGD over those groups);
- ``initial_targets(run)``: the targets of the first epoch, and the row of epoch 0 (None: no row);
- every epoch: ``before_epoch(epoch)`` (draws that must be the same on every process),
  ``epoch_order(epoch, world)``, ``loss(model, inputs, indices)`` for every batch,
  ``after_pass(order, world)`` and ``refresh_targets(run, epoch)`` (the next epoch's targets);
- ``state_dict()`` / ``load_state_dict(state)``: its own checkpoint keys.

Methods never test which process they are on and never write files: the engine does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import Dataset

from ..config import PretrainConfig
from ..data import ImageDataset
from ..datasets import load_dataset
from ..distributed import count_nonfinite
from ..errors import Diverged


@dataclass
class TrainingData:
    """The training images (with the per-image part of the augmentation) and the batched part."""

    images: Dataset
    batch_transform: nn.Module
    labels: np.ndarray | None  # the true labels, where the data has them (for the log)
    collate: Callable | None = None  # how samples become batches (None: torch's default)


@dataclass
class Refresh:
    """What a refresh of the targets reports: the row's statistics and timings (in the order they
    are logged), the cluster ids that go to ``assignments/epoch_NNN.npy`` (None: none) and each
    image's squared distance to its centroid, kept for the last clustering only
    (``assignments/distances_NNN.npy``; None: not at hand)."""

    stats: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    assignments: np.ndarray | None = None
    distances: np.ndarray | None = None


@dataclass
class RunContext:
    """The engine's services that a method's refresh may use."""

    fabric: Fabric
    model: nn.Module  # the plain model (not wrapped for DDP)
    data: TrainingData
    # One pass over ``order`` (this process's share) calling ``step(model, inputs, indices)`` on
    # every batch, in train mode without gradients; returns the seconds it took.
    forward_pass: Callable[[Sequence[int], Callable], float]
    # Set by the engine while a refresh runs when it wants the training images' features (the
    # online k-NN): a method with an extraction pass calls it with every batch's global
    # features and labels, ``feature_sink(features, labels)``; None: nobody wants them.
    feature_sink: Callable[[torch.Tensor, torch.Tensor], None] | None = None


class Method:
    """The hooks a method overrides (see the module docstring); defaults where one is natural."""

    name: str = ""
    title: str = ""  # the console table's title

    def __init__(self, config: PretrainConfig, fabric: Fabric):
        self.config = config
        self.fabric = fabric

    def training_data(self) -> TrainingData:
        raise NotImplementedError

    def training_images(self) -> ImageDataset:
        """The config's training split (its first ``subset`` images)."""
        config = self.config
        images = load_dataset(config.data, "train", skip_unreadable=config.skip_unreadable,
                              allow_outside_root=config.allow_outside_root)
        return images.subset(config.subset) if config.subset else images

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def initial_targets(self, run: RunContext) -> Refresh | None:
        raise NotImplementedError

    def before_epoch(self, epoch: int) -> None:
        """Draws made from the epoch's common seed before each process's own stream begins."""

    def epoch_order(self, epoch: int, world: int) -> Sequence[int]:
        """The image indices of 0-based ``epoch`` in training order, a multiple of ``world``
        long; process r trains on ``order[r::world]``."""
        raise NotImplementedError

    def loss(self, model: nn.Module, inputs: Any, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_pass(self, order: Sequence[int], world: int) -> None:
        """After every process's pass over ``order`` (e.g. share what the pass wrote)."""

    def refresh_targets(self, run: RunContext, epoch: int) -> Refresh:
        """The targets of the epoch after ``epoch`` (1-based: the epochs done)."""
        return Refresh()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint (the whole checkpoint dict: common keys and the method's)."""


def check_finite(values: np.ndarray | torch.Tensor, what: str) -> None:
    """Stop with ``Diverged`` when any process's ``values`` hold NaN or inf (before k-means,
    which would put every image into one cluster or fail inside faiss)."""
    bad = count_nonfinite(values)
    if bad:
        raise Diverged(f"{bad} of {what} are not finite (NaN or inf)")
