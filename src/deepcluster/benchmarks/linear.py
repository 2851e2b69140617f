"""Linear classification of frozen features: the multi-head probe (feature1..feature5) and AvgPool.

The backbone stays frozen in eval mode (no gradient, BatchNorm statistics untouched). Each probed
layer is pooled as in ``features.pooled_layers`` (the references' exact AvgPool2d for ResNet-50 at
224 px, adaptive pooling to the same 12/6/4/3/2 grids otherwise) and flattened; a multi-head
layer then goes through BatchNorm1d(affine=False) and a Linear layer, the AvgPool layer (global
average of the last stage) through a Linear layer only, as in the published recipes (the
small-image preset normalises it too: ``avgpool_bn``). All heads train at once from one backbone
forward pass, each with its own cross-entropy.

This module holds the probe, its optimizer, top-k and the training and evaluation of the heads
over any stream of ``Batches``; where the batches come from (the feature cache, or the backbone on
every augmented batch) is ``linear_features``, the settings ``linear_config`` and the whole run
(checkpoint -> ``OUT/results.json``) ``linear_run``.
"""

from __future__ import annotations

from typing import Iterator

import torch
from lightning.fabric import Fabric
from torch import nn

from ..features import LAYERS, pooled_layers
from ..models import Backbone
from .linear_config import LinearConfig

# What the heads train and are evaluated on: (pooled features by layer, targets) per batch.
Batches = Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]


# ----------------------------------------------------------------------------------------------
# The probe


class LinearProbe(nn.Module):
    """One linear classifier per probed layer; multi-head layers get BatchNorm(affine=False) first.

    ``forward`` takes the dict of pooled, flattened features (``features.pooled_layers``) and
    returns a dict of logits with the same keys.
    """

    def __init__(self, dims: dict[str, int], num_classes: int, avgpool_batch_norm: bool = False):
        super().__init__()
        heads = {}
        for name, dim in dims.items():
            linear = nn.Linear(dim, num_classes)
            nn.init.normal_(linear.weight, std=0.01)
            nn.init.zeros_(linear.bias)
            use_bn = name != "avgpool" or avgpool_batch_norm
            heads[name] = nn.Sequential(nn.BatchNorm1d(dim, affine=False), linear) if use_bn else linear
        self.heads = nn.ModuleDict(heads)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: head(features[name]) for name, head in self.heads.items()}


@torch.no_grad()
def head_dims(backbone: Backbone, image_size: int, layers: tuple[str, ...] = LAYERS) -> dict[str, int]:
    """The flattened size of each probed layer, from one forward pass of a single blank image."""
    was_training = backbone.training
    backbone.eval()
    try:
        device = next(backbone.parameters()).device
        out = pooled_layers(backbone, layers)(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        backbone.train(was_training)
    return {name: int(value.shape[1]) for name, value in out.items()}


def freeze(backbone: Backbone) -> Backbone:
    """Eval mode and no gradients: the probe must neither train it nor move its BatchNorm stats."""
    backbone.eval()
    backbone.requires_grad_(False)
    return backbone


def build_optimizer(probe: LinearProbe, config: LinearConfig) -> torch.optim.SGD:
    """SGD with one group per head and kind of parameter: no weight decay on norm layers, and the
    AvgPool head's own lr when it trains beside the multi-head ones."""
    groups = []
    for name, head in probe.heads.items():
        lr = config.avgpool_lr if name == "avgpool" and config.avgpool_lr and config.heads == "all" \
            else config.lr
        decay, no_decay = [], []
        for module in head.modules():
            is_norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
            (no_decay if is_norm else decay).extend(module.parameters(recurse=False))
        groups.append({"params": decay, "lr": lr, "weight_decay": config.weight_decay, "head": name})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "head": name})
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0)


# ----------------------------------------------------------------------------------------------
# Metrics


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)
                 ) -> dict[int, int]:
    """How many rows have their target among the ``k`` largest logits, for each ``k``.

    With fewer classes than ``k`` every row counts as correct for that ``k``.
    """
    largest = min(max(ks), logits.shape[1])
    top = logits.topk(largest, dim=1).indices
    hits = top.eq(targets.view(-1, 1))
    return {k: int(hits[:, :min(k, largest)].any(dim=1).sum()) for k in ks}


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)
                  ) -> dict[int, float]:
    """Top-k accuracy in percent for each ``k``."""
    return {k: 100.0 * hits / len(targets) for k, hits in topk_correct(logits, targets, ks).items()}


# ----------------------------------------------------------------------------------------------
# Training and evaluation


def train_epoch(fabric: Fabric, probe: nn.Module, optimizer: torch.optim.Optimizer,
                batches: Batches) -> dict[str, float]:
    """One pass over ``batches``; returns each head's mean training loss."""
    probe.train()
    totals: dict[str, float] = {}
    count = 0
    for features, targets in batches:
        if len(targets) < 2:  # BatchNorm cannot train on a single sample
            continue
        logits = probe(features)
        losses = {name: nn.functional.cross_entropy(out, targets) for name, out in logits.items()}
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(sum(losses.values()))
        optimizer.step()
        for name, loss in losses.items():
            totals[name] = totals.get(name, 0.0) + loss.item() * len(targets)
        count += len(targets)
    if count == 0:
        raise ValueError("no training batch with at least 2 images; add data or lower --batch-size")
    return {name: total / count for name, total in totals.items()}


@torch.no_grad()
def evaluate(probe: nn.Module, batches: Batches) -> dict[str, dict[str, float]]:
    """Top-1 and top-5 (percent) of every head over ``batches``."""
    probe.eval()
    hits: dict[str, dict[int, int]] = {}
    count = 0
    for features, targets in batches:
        for name, logits in probe(features).items():
            correct = topk_correct(logits, targets)
            head = hits.setdefault(name, {1: 0, 5: 0})
            for k in head:
                head[k] += correct[k]
        count += len(targets)
    if count == 0:
        raise ValueError("the validation split is empty")
    return {name: {"top1": 100.0 * h[1] / count, "top5": 100.0 * h[5] / count}
            for name, h in hits.items()}
