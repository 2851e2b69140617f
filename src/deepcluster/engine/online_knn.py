"""Online k-NN during pretraining: every ``knn_every`` epochs (and at the last one), the weighted
k-NN top-1 of the test split from the training images' features, with the definition of
``deepcluster benchmark knn`` (``benchmarks.knn``: k = 20, cosine, T = 0.07, the backbone's
global feature, the extraction transform). It goes into the epoch's row as ``knn_top1`` (its
seconds as ``knn_s``), and from there to metrics.csv, TensorBoard and the console line.

The training features come from the method's own extraction pass where it has one: DeepCluster's
clustering pass hands every batch to ``KnnAccumulator.update`` through
``RunContext.feature_sink`` (its ``extract_s`` then leaves out the time spent there, which goes
into ``knn_s``), so the figure costs the test split's extraction and the similarity products. A
method without such a pass (DeepCluster-v2, the supervised baseline) gets one extraction pass of
its training images. Only the test features and every test image's k best neighbours so far are
held, whatever the number of training images; under several processes each process accumulates
its own shard of the training images and the k best of all processes are merged.
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import Dataset

from ..benchmarks.knn import DEFAULT_K, DEFAULT_TEMPERATURE, weighted_vote
from ..config import PretrainConfig
from ..console import progress_bar
from ..datasets import load_dataset
from ..distributed import dataset_shard, gather_rows, is_distributed, rank_and_world
from ..features import make_loader, split_batch_transform
from ..methods.base import Method, Refresh, RunContext
from ..transforms import extraction_set

BUNDLED_LABELLED = ("fashion-mnist", "mnist", "digits")
TEST_CHUNK = 4096  # test rows per similarity product: (TEST_CHUNK x batch) floats at a time


def knn_interval(config: PretrainConfig) -> int:
    """Epochs between two online k-NN figures (0: none). ``knn_every`` -1 (the default) means
    every epoch on the bundled labelled data (fashion-mnist, mnist, digits), none elsewhere."""
    if config.knn_every >= 0:
        return config.knn_every
    return 1 if config.data in BUNDLED_LABELLED else 0


def knn_due(epoch: int, every: int, last_epoch: int) -> bool:
    """Whether the row of ``epoch`` (0: the untrained network) gets a k-NN figure."""
    return every > 0 and (epoch % every == 0 or epoch == last_epoch)


class KnnAccumulator:
    """Every test image's ``k`` most similar training images so far (cosine similarity and
    label), updated a batch of training features at a time."""

    def __init__(self, test_features: torch.Tensor, k: int = DEFAULT_K):
        self.test = nn.functional.normalize(test_features.float(), dim=1)
        self.values = torch.full((len(test_features), k), -torch.inf, device=self.test.device)
        self.labels = torch.zeros((len(test_features), k), dtype=torch.long,
                                  device=self.test.device)
        self.count = 0  # training images seen (by this process)
        self.seconds = 0.0

    @torch.inference_mode()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of training features (B, D) with their labels (B,)."""
        start = time.perf_counter()
        device = self.test.device
        with torch.autocast(device.type, enabled=False):  # in float32 under a bf16 extraction
            train = nn.functional.normalize(features.to(device).float(), dim=1)
            labels = labels.to(device).long()
            for begin in range(0, len(self.test), TEST_CHUNK):
                rows = slice(begin, begin + TEST_CHUNK)
                similarity = self.test[rows] @ train.T
                values = torch.cat([self.values[rows], similarity], dim=1)
                candidates = torch.cat([self.labels[rows], labels.expand(len(similarity), -1)], 1)
                top, index = values.topk(self.values.shape[1], dim=1)
                self.values[rows], self.labels[rows] = top, candidates.gather(1, index)
        self.count += len(features)
        self.seconds += time.perf_counter() - start

    def merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best neighbours over every process's training images (on the CPU)."""
        values, labels = self.values.cpu(), self.labels.cpu()
        _, world = rank_and_world()
        if world == 1:
            return values, labels
        k = values.shape[1]
        values = torch.from_numpy(gather_rows(values.numpy())).view(world, -1, k)
        labels = torch.from_numpy(gather_rows(labels.numpy())).view(world, -1, k)
        values, labels = values.permute(1, 0, 2).flatten(1), labels.permute(1, 0, 2).flatten(1)
        top, index = values.topk(k, dim=1)
        return top, labels.gather(1, index)

    def top1(self, test_labels: np.ndarray, num_classes: int,
             temperature: float = DEFAULT_TEMPERATURE, chunk: int = 1024) -> float:
        """Top-1 accuracy in percent of the weighted vote (``benchmarks.knn``'s)."""
        values, labels = self.merged()
        predicted = torch.cat([weighted_vote(values[s:s + chunk], labels[s:s + chunk],
                                             num_classes, temperature)
                               for s in range(0, len(values), chunk)]).numpy()
        return float((predicted == test_labels).mean() * 100.0)


@torch.inference_mode()
def stream_features(backbone: nn.Module, dataset: Dataset, batch_transform: nn.Module,
                    sink: Callable[[torch.Tensor, torch.Tensor], None], batch_size: int,
                    workers: int, device: torch.device, desc: str, progress: bool) -> None:
    """``sink(features, labels)`` for every batch of ``dataset`` (this process's contiguous shard
    under torch.distributed), with the backbone's global feature in eval mode; nothing kept."""
    if is_distributed():
        dataset = dataset_shard(dataset)
    collate, on_device = split_batch_transform(batch_transform.to(device), workers, device)
    loader = make_loader(dataset, batch_size, workers, collate_fn=collate)
    was_training = backbone.training
    backbone.eval()
    try:
        for images, labels in progress_bar(loader, desc, enabled=progress):
            images = on_device(images.to(device, non_blocking=True))
            sink(backbone(images).flatten(1).float(), labels)
    finally:
        backbone.train(was_training)


@contextmanager
def kept_random_state(device: torch.device) -> Iterator[None]:
    """The random streams as they were before (a loader draws a seed when it starts): the run
    is the same with or without the k-NN."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


class OnlineKnn:
    """The engine's online k-NN: ``measure`` wraps a refresh of the targets."""

    def __init__(self, config: PretrainConfig, fabric: Fabric, method: Method,
                 train_labels: np.ndarray | None, progress: bool = True):
        self.config, self.fabric, self.method = config, fabric, method
        self.every = knn_interval(config)
        self.train_labels = train_labels
        self.progress = progress and fabric.is_global_zero
        self.batch_size = config.extract_batch_size or 512
        self.test = self._test_split() if self.every else None
        self.active = self.test is not None

    def _test_split(self) -> Dataset | None:
        """The labelled test split, or None (with a warning) where there is none to measure."""
        config, explicit = self.config, self.config.knn_every > 0
        problem = None
        if self.train_labels is None:
            problem = f"data {config.data!r} has no labels"
        elif len(self.train_labels) < DEFAULT_K:
            problem = f"{len(self.train_labels)} training images are fewer than k={DEFAULT_K}"
        else:
            try:
                test = load_dataset(config.data, "test", skip_unreadable=config.skip_unreadable)
                if test.targets is None:
                    problem = f"data {config.data!r} has no labelled test split"
            except ValueError as error:  # DataError: no test split
                problem = str(error)
        if problem is None:
            return test
        if explicit:
            raise ValueError(f"knn_every={config.knn_every}: {problem}")
        warnings.warn(f"online k-NN off: {problem}", stacklevel=3)
        return None

    def due(self, epoch: int) -> bool:
        return self.active and knn_due(epoch, self.every, self.config.epochs)

    def measure(self, run: RunContext, epoch: int,
                refresh_targets: Callable[[RunContext], Refresh | None]) -> Refresh | None:
        """``refresh_targets(run)``, with the k-NN figure of the network it ran with added to the
        refresh (NaN at the epochs without one)."""
        if not self.active:
            return refresh_targets(run)
        if not self.due(epoch):
            refresh = refresh_targets(run)
            if refresh is not None:
                refresh.stats["knn_top1"], refresh.seconds["knn_s"] = float("nan"), float("nan")
            return refresh
        backbone = run.model.backbone
        accumulator = LazyAccumulator(lambda: self.test_features(backbone))
        run.feature_sink = accumulator.update
        try:
            refresh = refresh_targets(run)
        finally:
            run.feature_sink = None
        if refresh is not None:
            self.finish(run, accumulator, refresh)
        return refresh

    def test_features(self, backbone: nn.Module) -> torch.Tensor:
        """The test split's global features (every process holds all of them)."""
        parts: list[torch.Tensor] = []
        dataset, batch = extraction_set(self.test, self.config.image_size,
                                        self.config.channels_last)
        with kept_random_state(self.fabric.device), self.fabric.autocast():
            stream_features(backbone, dataset, batch, lambda f, _: parts.append(f.cpu()),
                            self.batch_size, self.config.workers, self.fabric.device,
                            "k-NN test", self.progress)
        features = torch.cat(parts).numpy()
        return torch.from_numpy(gather_rows(features)).to(self.fabric.device)

    def finish(self, run: RunContext, accumulator: "LazyAccumulator", refresh: Refresh) -> None:
        start = time.perf_counter()
        fed = accumulator.count > 0
        if fed and "extract_s" in refresh.seconds:
            refresh.seconds["extract_s"] -= accumulator.seconds  # counted in knn_s instead
        if not fed:  # no extraction pass in the method: one of the training images
            images, batch = extraction_set(self.method.training_images(),
                                           self.config.image_size, self.config.channels_last)
            with kept_random_state(self.fabric.device), self.fabric.autocast():
                stream_features(run.model.backbone, images, batch, accumulator.update,
                                self.batch_size, self.config.workers, self.fabric.device,
                                "k-NN train", self.progress)
        num_classes = int(self.train_labels.max()) + 1
        refresh.stats["knn_top1"] = accumulator.top1(self.test.targets, num_classes)
        refresh.seconds["knn_s"] = ((time.perf_counter() - start) +
                                    (accumulator.seconds if fed else 0.0))


class LazyAccumulator:
    """A ``KnnAccumulator`` whose test features are extracted when the first training batch
    arrives (so that a refresh with no row, or none of its own, extracts nothing)."""

    def __init__(self, test_features: Callable[[], torch.Tensor]):
        self.make = test_features
        self.inner: KnnAccumulator | None = None
        self.test_seconds = 0.0

    def _accumulator(self) -> KnnAccumulator:
        if self.inner is None:
            start = time.perf_counter()
            self.inner = KnnAccumulator(self.make())
            self.test_seconds = time.perf_counter() - start
        return self.inner

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self._accumulator().update(features, labels)

    @property
    def count(self) -> int:
        return 0 if self.inner is None else self.inner.count

    @property
    def seconds(self) -> float:
        """Seconds spent here: the test extraction and the updates."""
        return self.test_seconds + (0.0 if self.inner is None else self.inner.seconds)

    def top1(self, test_labels: np.ndarray, num_classes: int) -> float:
        return self._accumulator().top1(test_labels, num_classes)
