"""The linear benchmark run: checkpoint + ``LinearConfig`` -> ``OUT/results.json``.

Trains the probe (``linear``) on the train split from its feature source (``linear_features``),
evaluates top-1 and top-5 of every head on the validation (``test``) split, and writes
``OUT/results.json``, ``OUT/metrics.csv`` and the probe in ``OUT/probe.ckpt``; ``results_table``
shows one run in the published layout. One run at a time per folder (``OUT/.lock``); after every
epoch the probe's state is saved (``linear_state``), and a killed run given again continues from
it to the results of an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from rich.table import Table
from torch import nn
from torch.utils.data import Dataset

from ..checkpoint import backbone_from_checkpoint, load_checkpoint, save_checkpoint, save_json
from ..datasets import load_dataset
from ..console import console
from ..transforms import ChannelsLast
from .folder_lock import locked_folder
from .linear import LinearProbe, build_optimizer, evaluate, freeze, head_dims, train_epoch
from .linear_config import LinearConfig
from .linear_features import EpochSource, feature_sources
from .linear_state import (STATE_FILE, load_state, probe_identity, remove_state, restore,
                           save_state, write_metrics)
from .svm_features import file_digest

COLUMN_TITLES = {"feature1": "Feature1", "feature2": "Feature2", "feature3": "Feature3",
                 "feature4": "Feature4", "feature5": "Feature5", "avgpool": "AvgPool"}


def _labelled(data: str, split: str, limit: int) -> Dataset:
    dataset = load_dataset(data, split)
    if dataset.targets is None:
        raise ValueError(f"--data {data!r} ({split} split) has no labels; a linear probe needs them")
    return dataset.subset(limit) if limit else dataset


def _num_classes(train: Dataset, test: Dataset, data: str) -> int:
    num = max(len(train.classes), int(train.targets.max()) + 1)
    if len(test) and int(test.targets.max()) >= num:
        raise ValueError(f"--data {data!r}: validation label {int(test.targets.max())} is not "
                         f"among the {num} training classes")
    return num


def checkpoint_label(path: str | Path, random_init: bool) -> str:
    """How a run is labelled in the tables: deepcluster, random init or supervised."""
    if random_init:
        return "random init"
    state = load_checkpoint(path)
    # "supervised" key: baselines written before the supervised baseline was a method
    supervised = state["config"].get("method") == "supervised" or "supervised" in state
    return "supervised" if supervised else "deepcluster"


def run_linear(checkpoint: str | Path, config: LinearConfig, out: str | Path,
               random_init: bool = False, label: str | None = None, preset: str | None = None,
               progress: bool = True, restart: bool = False) -> dict[str, Any]:
    """Train the probe on the train split, evaluate on the validation (test) split, and write
    ``out/results.json`` (plus ``out/metrics.csv`` and the probe in ``out/probe.ckpt``).

    A probe state left in ``out`` by a killed run of the same config and checkpoint is continued;
    one of another run is refused (ValueError) unless ``restart``."""
    with locked_folder(out):
        return _run_linear(checkpoint, config, Path(out), random_init, label, preset, progress,
                           restart)


def _run_linear(checkpoint, config: LinearConfig, out: Path, random_init: bool, label, preset,
                progress: bool, restart: bool) -> dict[str, Any]:
    total_start = time.perf_counter()
    identity = probe_identity(config, file_digest(checkpoint), random_init)
    saved = load_state(out, identity, config.epochs, restart)  # before any expensive work
    fabric = Fabric(accelerator=config.accelerator, devices=1, precision=config.precision)
    if config.threads:
        torch.set_num_threads(config.threads)
    backbone, layout, pretrain_config = _frozen_backbone(checkpoint, random_init, fabric)
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
    history, train_seconds = [], 0.0
    if saved is not None:
        restore(saved, probe, optimizer, scheduler, loss_scaler(fabric))
        history, train_seconds = list(saved["history"]), saved["train_seconds"]
        console.print(f"resuming the probe in {out / STATE_FILE}: {saved['epoch']} of "
                      f"{config.epochs} epochs done")
    train_seconds = _train(fabric, fabric_probe, optimizer, scheduler, train_batches, history,
                           train_seconds, config, out, identity, progress)
    write_metrics(history, out)
    start = time.perf_counter()
    heads = evaluate(fabric_probe, test_batches())
    eval_seconds = time.perf_counter() - start

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
    remove_state(out)
    return results


def _frozen_backbone(checkpoint, random_init: bool, fabric: Fabric):
    """The checkpoint's network, frozen on the device, the layout its batches need, its config."""
    backbone, pretrain_config = backbone_from_checkpoint(checkpoint, random_init=random_init)
    backbone = freeze(backbone).to(fabric.device)
    layout = nn.Identity()
    if getattr(pretrain_config, "channels_last", False):  # faster convolutions, as in pretraining
        backbone, layout = backbone.to(memory_format=torch.channels_last), ChannelsLast()
    return backbone, layout, pretrain_config


def loss_scaler(fabric: Fabric) -> Any:
    """The gradient scaler of 16-mixed precision (its scale is part of the training state), or
    None."""
    return getattr(fabric.strategy.precision, "scaler", None)


def _train(fabric: Fabric, probe: nn.Module, optimizer, scheduler, train_batches: EpochSource,
           history: list[dict[str, Any]], seconds: float, config: LinearConfig, out: Path,
           identity: dict[str, Any], progress: bool) -> float:
    """The epochs after ``len(history)``; each one's row appended to ``history``, then
    metrics.csv and the state written (in that order: a state never has more rows than the
    file). ``seconds``: the training time before; returns it with this call's added."""
    start = time.perf_counter() - seconds
    for epoch in range(len(history), config.epochs):
        lr = optimizer.param_groups[0]["lr"]
        losses = train_epoch(fabric, probe, optimizer, train_batches(epoch))
        scheduler.step()
        history.append({"epoch": epoch + 1, "lr": lr,
                        **{f"loss_{name}": v for name, v in losses.items()}})
        write_metrics(history, out)
        save_state(out, identity, epoch + 1, probe, optimizer, scheduler, loss_scaler(fabric),
                   history, time.perf_counter() - start)
        if progress:
            console.print(f"epoch {epoch + 1}/{config.epochs}  lr={lr:g}  " +
                          "  ".join(f"{n}={v:.3f}" for n, v in losses.items()))
    return time.perf_counter() - start


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
