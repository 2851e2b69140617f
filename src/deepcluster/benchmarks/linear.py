"""Linear classification of frozen features: the multi-head probe (feature1..feature5) and AvgPool.

The backbone stays frozen in eval mode (no gradient, BatchNorm statistics untouched). Each probed
layer is pooled as in ``features.pooled_layers`` (the references' exact AvgPool2d for ResNet-50 at
224 px, adaptive pooling to the same 12/6/4/3/2 grids otherwise) and flattened; a multi-head
layer then goes through BatchNorm1d(affine=False) and a Linear layer, the AvgPool layer (global
average of the last stage) through a Linear layer only, as in the published recipes (the
small-image preset normalises it too: ``avgpool_bn``). All heads train at once from one backbone
forward pass, each with its own cross-entropy.

Two modes, chosen by the augmentation:

- **cached**: with ``augmentation="none"`` the training features never change, so they are
  extracted once (float16 by default, to halve the memory) and the heads train on the cache for
  as many epochs as wanted; this is what makes the small-image preset take minutes;
- **streamed**: with a random augmentation every batch costs one backbone forward pass (shared by
  all heads); this is the ImageNet / Places205 / iNaturalist setting.

Top-1 and top-5 of every head on the validation (``test``) split go to ``OUT/results.json``.
"""

from __future__ import annotations

import math
import time
from functools import partial
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import click
import numpy as np
import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers import CSVLogger
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import InterpolationMode, v2

from ..checkpoint import backbone_from_checkpoint, load_checkpoint, save_checkpoint, save_json
from ..config import PRECISIONS
from ..features import LAYERS, extract_layers, make_loader, pooled_layers
from ..data import ArrayImageDataset
from ..models import FEATURE_NAMES, Backbone, DeepClusterModel
from ..readers import load_benchmark_dataset
from ..report import console, progress_bar
from ..transforms import (ChannelsLast, _normalise, extraction_pipeline, extraction_transform,
                          is_small, training_pipeline, training_transform)

HEAD_SETS = {"mhead": FEATURE_NAMES, "avgpool": ("avgpool",), "all": LAYERS}
# Training augmentations of the probes; "none" (the extraction transform) allows the feature cache.
PROBE_AUGMENTATIONS = ("imagenet-mhead", "crop-flip", "places", "none")
CACHE_MODES = ("auto", "off")
CACHE_DTYPES = ("float16", "float32")
COLUMN_TITLES = {"feature1": "Feature1", "feature2": "Feature2", "feature3": "Feature3",
                 "feature4": "Feature4", "feature5": "Feature5", "avgpool": "AvgPool"}


# ----------------------------------------------------------------------------------------------
# Configuration and presets


@dataclass(frozen=True)
class LinearConfig:
    data: str = field(default="fashion-mnist", metadata={"help": "dataset: fashion-mnist, mnist, digits, imagenet:DIR, places205:DIR, inat2018:DIR, or any --data form"})
    heads: str = field(default="all", metadata={"help": "mhead (feature1..5), avgpool, or all (both, one forward pass)"})
    epochs: int = field(default=15, metadata={"help": "training epochs"})
    batch_size: int = field(default=256, metadata={"help": "training batch size"})
    lr: float = field(default=0.01, metadata={"help": "SGD learning rate (multi-head heads, or the AvgPool head alone)"})
    avgpool_lr: float = field(default=0.0, metadata={"help": "learning rate of the AvgPool head when trained beside the multi-head ones (0: same as lr)"})
    avgpool_bn: bool = field(default=True, metadata={"help": "BatchNorm(affine=False) before the AvgPool head too (the published recipe has none)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    nesterov: bool = field(default=True, metadata={"help": "Nesterov momentum"})
    weight_decay: float = field(default=1e-4, metadata={"help": "weight decay (never on norm layers)"})
    milestones: tuple[int, ...] = field(default=(10, 13), metadata={"help": "epochs where the lr is multiplied by gamma, comma-separated"})
    gamma: float = field(default=0.1, metadata={"help": "lr factor at each milestone"})
    augmentation: str = field(default="none", metadata={"help": "training augmentation: " + ", ".join(PROBE_AUGMENTATIONS) + " (none: features cached)"})
    image_size: int = field(default=0, metadata={"help": "input crop size in pixels (0: the checkpoint's)"})
    cache: str = field(default="auto", metadata={"help": "auto: cache features when the augmentation is none; off: always stream"})
    cache_dtype: str = field(default="float16", metadata={"help": "dtype of the feature cache: float16 (half the memory) or float32"})
    subset: int = field(default=0, metadata={"help": "use only the first N training images (0: all)"})
    test_subset: int = field(default=0, metadata={"help": "evaluate on the first N validation images (0: all)"})
    eval_batch_size: int = field(default=512, metadata={"help": "batch size of extraction and evaluation"})
    workers: int = field(default=0, metadata={"help": "data-loading worker processes"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    accelerator: str = field(default="auto", metadata={"help": "cpu, cuda or auto"})
    precision: str = field(default="32-true", metadata={"help": "precision: " + ", ".join(PRECISIONS)})
    seed: int = field(default=0, metadata={"help": "seed of head initialisation, shuffling and augmentation"})

    def __post_init__(self) -> None:
        for name, choices in (("heads", HEAD_SETS), ("augmentation", PROBE_AUGMENTATIONS),
                              ("cache", CACHE_MODES), ("cache_dtype", CACHE_DTYPES),
                              ("precision", PRECISIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {', '.join(choices)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("subset", "test_subset", "workers", "threads", "image_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must not be negative")
        if self.lr <= 0 or self.avgpool_lr < 0:
            raise ValueError(f"lr={self.lr} must be positive and avgpool_lr={self.avgpool_lr} "
                             "not negative")
        if list(self.milestones) != sorted(self.milestones) or any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones={self.milestones} must be increasing positive epochs")

    @property
    def layers(self) -> tuple[str, ...]:
        return HEAD_SETS[self.heads]

    @property
    def cached(self) -> bool:
        return self.cache == "auto" and self.augmentation == "none"

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["milestones"] = list(self.milestones)
        return values

    def override(self, **changes: Any) -> "LinearConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_IMAGENET = dict(batch_size=256, momentum=0.9, nesterov=True, image_size=224, workers=8,
                 eval_batch_size=256, avgpool_bn=False)

PRESETS: dict[str, LinearConfig] = {
    # MMSelfSup 0.x multi-head recipe: all five heads, steps at 30/60 (1.x's 4 heads and 60/80
    # milestones are slips, not copied).
    "imagenet-mhead": LinearConfig(
        data="imagenet:data/imagenet", heads="mhead", epochs=90, lr=0.01, weight_decay=1e-4,
        milestones=(30, 60), augmentation="imagenet-mhead", **_IMAGENET),
    # Global-average-pooled res5 -> Linear, no BatchNorm; lr 30 without weight decay.
    "imagenet-avgpool": LinearConfig(
        data="imagenet:data/imagenet", heads="avgpool", epochs=100, lr=30.0, weight_decay=0.0,
        milestones=(60, 80), augmentation="crop-flip", **{**_IMAGENET, "nesterov": False}),
    # 28 epochs, steps 7/14/21 (1.x's 100 epochs are a slip); resize 256, centre 256, random 224.
    "places205-mhead": LinearConfig(
        data="places205:data/places205", heads="mhead", epochs=28, lr=0.01, weight_decay=1e-4,
        milestones=(7, 14, 21), augmentation="places", **_IMAGENET),
    "inat18-mhead": LinearConfig(
        data="inat2018:data/inat2018", heads="mhead", epochs=84, lr=0.01, weight_decay=1e-4,
        milestones=(24, 48, 72), augmentation="imagenet-mhead", **_IMAGENET),
    # Small images on a laptop CPU: features cached once, all six heads in a few minutes. The
    # published multi-head lr, 15 epochs (235 steps each on Fashion-MNIST), steps at 10/13; tuned
    # on a 20k-image training subset against lr 0.003 / 0.03 (within a point of each other).
    "fashion-mnist-mhead": LinearConfig(),
}
DEFAULT_PRESET = "fashion-mnist-mhead"
_PRESET_BY_PREFIX = {"imagenet:": "imagenet-mhead", "places205:": "places205-mhead",
                     "inat2018:": "inat18-mhead"}


def get_preset(name: str) -> LinearConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown linear preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def default_preset(data: str | None, heads: str | None) -> str:
    """The preset a run without ``--preset`` starts from: the one matching the dataset prefix."""
    for prefix, name in _PRESET_BY_PREFIX.items():
        if data and data.startswith(prefix):
            return "imagenet-avgpool" if name == "imagenet-mhead" and heads == "avgpool" else name
    return DEFAULT_PRESET


# ----------------------------------------------------------------------------------------------
# Transforms


class Lighting:
    """AlexNet-style PCA colour noise on a [0, 1] tensor (ImageNet eigenvalues, alpha std 0.1)."""

    EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
    EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                           [-0.5808, -0.0045, -0.8140],
                           [-0.5836, -0.6948, 0.4203]])

    def __init__(self, alpha_std: float = 0.1):
        self.alpha_std = alpha_std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.alpha_std
        rgb = (self.EIGVEC * alpha * self.EIGVAL).sum(dim=1)
        return image + rgb.view(3, 1, 1)


def probe_train_transform(name: str, image_size: int) -> Callable:
    """The probe's training augmentation at ``image_size`` (see PROBE_AUGMENTATIONS)."""
    if name == "none":
        return extraction_transform(image_size)
    if name == "crop-flip":
        return training_transform("original", image_size)
    to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    normalise = _normalise(image_size)[-1:]
    if name == "imagenet-mhead":
        steps = [v2.RandomResizedCrop(image_size, interpolation=InterpolationMode.BICUBIC,
                                      antialias=True),
                 v2.RandomHorizontalFlip(),
                 v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0),
                 *to_tensor, Lighting()]
    elif name == "places":
        resize = round(image_size * 256 / 224)
        steps = [v2.Resize(resize, antialias=True), v2.CenterCrop(resize),
                 v2.RandomCrop(image_size), v2.RandomHorizontalFlip(), *to_tensor]
    else:
        raise ValueError(f"augmentation {name!r} is not one of {', '.join(PROBE_AUGMENTATIONS)}")
    return v2.Compose([v2.RGB(), *steps, *normalise])


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
# Feature sources: the cache, or the backbone applied to every batch

Batches = Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]


class _BatchTransformed(nn.Module):
    """A backbone whose ``forward_features`` first applies a batch transform (the batched
    extraction pipeline of in-memory small images), so ``features.extract_layers`` can run it."""

    def __init__(self, backbone: Backbone, batch_transform: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.batch_transform = batch_transform

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone.forward_features(self.batch_transform(x))


def extraction_inputs(dataset: Dataset, image_size: int) -> tuple[Dataset, nn.Module]:
    """The dataset with its extraction transform, and the transform left for each batch: small
    images held in memory are converted a whole batch at a time, as in pretraining."""
    in_memory = isinstance(dataset, ArrayImageDataset) and is_small(image_size)
    pipeline = extraction_pipeline(image_size, in_memory)
    return dataset.with_transform(pipeline.sample), pipeline.batch


def cache_features(backbone: Backbone, dataset: Dataset, layers: tuple[str, ...], dtype: str,
                   batch_size: int, workers: int, device: torch.device, desc: str,
                   batch_transform: nn.Module | None = None, chunk: int = 8192
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pooled features of every image, stored as ``dtype`` (CPU tensors).

    Extracted in chunks so that only one chunk is ever held in float32. A float16 layer whose
    values would overflow is kept in float32 instead.
    """
    if batch_transform is not None:
        backbone = _BatchTransformed(backbone, batch_transform.to(device))
    num = len(dataset)
    cache: dict[str, torch.Tensor] = {}
    labels = torch.empty(num, dtype=torch.int64)
    for start in progress_bar(range(0, num, chunk), desc):
        part = Subset(dataset, range(start, min(start + chunk, num)))
        features, targets = extract_layers(backbone, part, layers, batch_size, workers, device,
                                           progress=False)
        for name, values in features.items():
            values = torch.from_numpy(values)
            if name not in cache:
                store = getattr(torch, dtype)
                cache[name] = torch.empty((num, values.shape[1]), dtype=store)
            if cache[name].dtype == torch.float16 and values.abs().max() > 6e4:
                cache[name] = cache[name].float()
            cache[name][start:start + len(values)] = values.to(cache[name].dtype)
        labels[start:start + len(targets)] = torch.from_numpy(targets)
    return cache, labels


def cached_batches(cache: dict[str, torch.Tensor], labels: torch.Tensor, batch_size: int,
                   generator: torch.Generator | None = None, device: torch.device | None = None
                   ) -> Batches:
    """Batches from the cache, shuffled with ``generator`` when given, as float32."""
    num = len(labels)
    order = torch.randperm(num, generator=generator) if generator is not None else torch.arange(num)
    for start in range(0, num, batch_size):
        index = order[start:start + batch_size]
        yield ({name: values[index].to(device).float() for name, values in cache.items()},
               labels[index].to(device))


def streamed_batches(fabric: Fabric, backbone: Backbone, loader: DataLoader,
                     layers: tuple[str, ...], desc: str, layout: nn.Module | None = None) -> Batches:
    """One frozen backbone forward per batch, shared by every head; ``layout`` prepares the
    batch (channels-last) before the backbone."""
    run = pooled_layers(backbone, layers)
    for images, targets in progress_bar(loader, desc):
        backbone.eval()  # nothing may put it back into training mode behind our back
        if layout is not None:
            images = layout(images)
        with torch.no_grad(), fabric.autocast():
            features = {name: value.float() for name, value in run(images).items()}
        yield features, targets


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


def _labelled(data: str, split: str, limit: int) -> Dataset:
    dataset = load_benchmark_dataset(data, split)
    if dataset.targets is None:
        raise ValueError(f"--data {data!r} ({split} split) has no labels; a linear probe needs them")
    return dataset.subset(limit) if limit else dataset


def _num_classes(train: Dataset, test: Dataset, data: str) -> int:
    num = max(len(train.classes), int(train.targets.max()) + 1)
    if len(test) and int(test.targets.max()) >= num:
        raise ValueError(f"--data {data!r}: validation label {int(test.targets.max())} is not "
                         f"among the {num} training classes")
    return num


BatchSource = Callable[[], Batches]


def feature_sources(fabric: Fabric, backbone: Backbone, config: LinearConfig, train: Dataset,
                    test: Dataset, image_size: int, layout: nn.Module
                    ) -> tuple[BatchSource, BatchSource, float]:
    """Where the heads' batches come from: the cache (extracted here; its seconds are returned)
    or the frozen backbone on every augmented batch (0 seconds up front). ``layout`` puts each
    batch in the backbone's memory layout."""
    layers = config.layers
    generator = torch.Generator().manual_seed(config.seed)
    if config.cached:
        start = time.perf_counter()
        caches = []
        for split, dataset in (("train", train), ("test", test)):
            inputs, batch_transform = extraction_inputs(dataset, image_size)
            caches.append(cache_features(backbone, inputs, layers, config.cache_dtype,
                                         config.eval_batch_size, config.workers, fabric.device,
                                         f"cache {split}", nn.Sequential(batch_transform, layout)))
        (train_cache, train_labels), (test_cache, test_labels) = caches
        return (partial(cached_batches, train_cache, train_labels, config.batch_size, generator,
                        fabric.device),
                partial(cached_batches, test_cache, test_labels, config.eval_batch_size, None,
                        fabric.device),
                time.perf_counter() - start)
    train_set = train.with_transform(probe_train_transform(config.augmentation, image_size))
    train_loader = fabric.setup_dataloaders(
        make_loader(train_set, config.batch_size, config.workers, shuffle=True,
                    generator=generator), use_distributed_sampler=False)
    test_loader = fabric.setup_dataloaders(
        make_loader(test.with_transform(extraction_transform(image_size)),
                    config.eval_batch_size, config.workers), use_distributed_sampler=False)
    return (partial(streamed_batches, fabric, backbone, train_loader, layers, "probe train", layout),
            partial(streamed_batches, fabric, backbone, test_loader, layers, "probe eval", layout),
            0.0)


def checkpoint_label(path: str | Path, random_init: bool) -> str:
    """How a run is labelled in the tables: deepcluster, random init or supervised."""
    if random_init:
        return "random init"
    return "supervised" if "supervised" in load_checkpoint(path) else "deepcluster"


def run_linear(checkpoint: str | Path, config: LinearConfig, out: str | Path,
               random_init: bool = False, label: str | None = None, preset: str | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Train the probe on the train split, evaluate on the validation (test) split, and write
    ``out/results.json`` (plus ``out/metrics.csv`` and the probe in ``out/probe.ckpt``)."""
    total_start = time.perf_counter()
    out = Path(out)
    fabric = Fabric(accelerator=config.accelerator, devices=1, precision=config.precision,
                    loggers=[CSVLogger(out, name="", version="")])
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    backbone, pretrain_config = backbone_from_checkpoint(checkpoint, random_init=random_init)
    backbone = freeze(backbone).to(fabric.device)
    layout = nn.Identity()
    if getattr(pretrain_config, "channels_last", False):  # faster convolutions, as in pretraining
        backbone, layout = backbone.to(memory_format=torch.channels_last), ChannelsLast()
    image_size = config.image_size or pretrain_config.image_size
    train = _labelled(config.data, "train", config.subset)
    test = _labelled(config.data, "test", config.test_subset)
    num_classes = _num_classes(train, test, config.data)

    torch.manual_seed(config.seed)
    probe = LinearProbe(head_dims(backbone, image_size, config.layers), num_classes,
                        config.avgpool_bn)
    optimizer = build_optimizer(probe, config)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), config.gamma)
    fabric_probe, optimizer = fabric.setup(probe, optimizer)

    train_batches, test_batches, extract_seconds = feature_sources(
        fabric, backbone, config, train, test, image_size, layout)

    history = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        lr = optimizer.param_groups[0]["lr"]
        losses = train_epoch(fabric, fabric_probe, optimizer, train_batches())
        scheduler.step()
        row = {"epoch": epoch + 1, "lr": lr, **{f"loss_{name}": v for name, v in losses.items()}}
        history.append(row)
        fabric.log_dict({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
        if progress:
            console.print(f"epoch {epoch + 1}/{config.epochs}  lr={lr:g}  " +
                          "  ".join(f"{n}={v:.3f}" for n, v in losses.items()))
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    heads = evaluate(fabric_probe, test_batches())
    eval_seconds = time.perf_counter() - start
    for logger in fabric.loggers:
        logger.finalize("success")

    save_checkpoint({"config": config.to_dict(), "probe": probe.state_dict(),
                     "checkpoint": str(checkpoint), "random_init": random_init}, out / "probe.ckpt")
    results = {
        "benchmark": "linear",
        "label": label or checkpoint_label(checkpoint, random_init),
        "checkpoint": str(checkpoint),
        "random_init": random_init,
        "arch": pretrain_config.arch,
        "data": config.data,
        "split": "test",
        "preset": preset,
        "mode": "cached" if config.cached else "streamed",
        "image_size": image_size,
        "num_classes": num_classes,
        "train_images": len(train),
        "test_images": len(test),
        "dims": {name: int(head.in_features if isinstance(head, nn.Linear) else head[1].in_features)
                 for name, head in probe.heads.items()},
        "heads": heads,
        "seconds": {"extract": extract_seconds, "train": train_seconds, "eval": eval_seconds,
                    "total": time.perf_counter() - total_start},
        "config": config.to_dict(),
        "history": history,
    }
    save_json(results, out / "results.json")
    return results


def results_table(results: dict[str, Any]) -> Table:
    """The published layout: one column per head (Feature1..Feature5, AvgPool), top-1 and top-5."""
    seconds = results["seconds"]
    table = Table(title=f"Linear classification ({results['label']}, {results['arch']}) on "
                        f"{results['data']} {results['split']}, {results['mode']} features, "
                        f"{seconds['total']:.0f} s")
    table.add_column("metric")
    for title in COLUMN_TITLES.values():
        table.add_column(title, justify="right")
    for metric in ("top1", "top5"):
        cells = [f"{results['heads'][name][metric]:.2f}" if name in results["heads"] else "–"
                 for name in COLUMN_TITLES]
        table.add_row("top-1 %" if metric == "top1" else "top-5 %", *cells)
    return table


# ----------------------------------------------------------------------------------------------
# Command line (registered in cli.py as ``benchmark linear`` and ``train-supervised``)


def _config_options(command):
    """One ``--name`` option per LinearConfig field; unset options keep the preset's value."""
    default = PRESETS[DEFAULT_PRESET]
    for spec in reversed(fields(LinearConfig)):
        if spec.name in ("data", "heads"):
            continue  # declared explicitly on the command
        flag = spec.name.replace("_", "-")
        value = getattr(default, spec.name)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        help_text = f"{spec.metadata['help']} [{DEFAULT_PRESET}: {shown}]"
        if spec.type in ("bool", bool):
            option = click.option(f"--{flag}/--no-{flag}", spec.name, default=None, help=help_text)
        elif spec.name == "milestones":
            option = click.option(f"--{flag}", spec.name, type=str, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[spec.type]
            option = click.option(f"--{flag}", spec.name, type=kind, default=None, help=help_text)
        command = option(command)
    return command


def parse_milestones(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--milestones {text!r}: expected comma-separated epochs, e.g. 30,60")


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", default=None, help="dataset [preset's]: fashion-mnist, mnist, digits, "
              "imagenet:DIR, places205:DIR, inat2018:DIR, or any --data path")
@click.option("--heads", type=click.Choice(sorted(HEAD_SETS)), default=None,
              help="mhead: feature1..5; avgpool; all: both from one forward pass [preset's]")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="recipe [by the --data prefix, else fashion-mnist-mhead]")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--random-init", is_flag=True, help="evaluate the same network untrained")
@click.option("--label", default=None, help="row label in tables [deepcluster / random init / "
              "supervised, from the checkpoint]")
@_config_options
def linear_command(checkpoint, data, heads, preset, out, random_init, label, milestones,
                   **overrides) -> None:
    """Linear probes on frozen features: top-1/top-5 per head on the validation split."""
    preset = preset or default_preset(data, heads)
    config = get_preset(preset).override(data=data, heads=heads,
                                         milestones=parse_milestones(milestones), **overrides)
    console.print(f"preset {preset}: {config.heads} heads, {config.epochs} epochs, "
                  f"{'cached' if config.cached else 'streamed'} features")
    results = run_linear(checkpoint, config, out, random_init=random_init, label=label,
                         preset=preset)
    console.print(results_table(results))
    console.print(f"results: {Path(out) / 'results.json'}")
