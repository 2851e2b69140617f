"""The Python API for scripting experiments (re-exported by the package ``deepcluster``):

    import deepcluster as dc
    config = dc.make_config("fashion-mnist", epochs=2, out="runs/fm")   # or dc.load_config("x.yaml")
    result = dc.pretrain(config)                                        # or dc.resume("runs/fm")
    backbone, config = dc.load_backbone(result.checkpoint)
    knn = dc.run_knn(result.checkpoint, "fashion-mnist", "runs/fm/knn")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import backbone_from_checkpoint, load_checkpoint
from .config import PretrainConfig, load_yaml_config
from .engine import PretrainResult, pretrain
from .engine.resume import find_checkpoint, resumed_config
from .models import Backbone
from .presets import get_preset


def make_config(preset: str | None = None, **fields: Any) -> PretrainConfig:
    """A config from a named preset (default: the default config) with ``fields`` changed."""
    base = get_preset(preset) if preset else PretrainConfig()
    return base.override(**fields)


def load_config(path: str | Path, **fields: Any) -> PretrainConfig:
    """A config from a YAML file (a run folder's ``config.yaml``, or a partial one over the
    default config), with ``fields`` changed."""
    return load_yaml_config(path).override(**fields)


def resume(run: str | Path, progress: bool = True, **changes: Any) -> PretrainResult:
    """Continue the run of a checkpoint or run folder, with resumable ``changes`` (``epochs``...)."""
    checkpoint = find_checkpoint(run, run)
    return pretrain(resumed_config(checkpoint, changes), resume=checkpoint, progress=progress)


def load_backbone(checkpoint: str | Path, random_init: bool = False) -> tuple[Backbone, PretrainConfig]:
    """The backbone of a checkpoint (eval mode) and its config."""
    return backbone_from_checkpoint(checkpoint, random_init=random_init)


def supervised_config(like: str | Path, out: str | Path, data: str | None = None,
                      epochs: int = 5, lr: float = 0.05, weight_decay: float = 5e-4,
                      batch_size: int = 256, subset: int = 0, workers: int = 0,
                      threads: int = 0) -> PretrainConfig:
    """The supervised baseline of the network of checkpoint ``like``: its architecture, input,
    augmentation, precision and seed, trained on ``data``'s labels with SGD (momentum 0.9) and a
    per-epoch cosine schedule."""
    config = PretrainConfig.from_dict(load_checkpoint(like)["config"], source=str(like))
    return config.override(method="supervised").override(
        data=data or config.data, epochs=epochs, lr=lr, weight_decay=weight_decay,
        batch_size=batch_size, subset=subset, workers=workers, threads=threads or config.threads,
        out=str(out), momentum=0.9, lr_schedule="cosine-epoch", warmup_epochs=0.0, keep_every=0,
        devices=1)


def train_supervised(like: str | Path, out: str | Path, progress: bool = True,
                     **options: Any) -> Path:
    """Train the supervised baseline of ``like``'s network (``supervised_config``); returns the
    checkpoint, which every benchmark reads like a pretraining one."""
    return pretrain(supervised_config(like, out, **options), progress=progress).checkpoint


def run_knn(checkpoint: str | Path, data: str, out: str | Path, **options: Any) -> dict:
    """Weighted k-NN top-1 of a checkpoint's features (``benchmarks.knn.run_knn``)."""
    from .benchmarks.knn import run_knn as run  # the benchmarks load only when used

    return run(checkpoint, data, out, **options)


def run_linear(checkpoint: str | Path, out: str | Path, preset: str | None = None,
               **fields: Any) -> dict:
    """Linear probes of a checkpoint's frozen features (``benchmarks.linear``), from a linear
    preset (default: by the data) with ``fields`` changed."""
    from .benchmarks import linear_config, linear_run  # the benchmarks load only when used

    name = preset or linear_config.default_preset(fields.get("data"), fields.get("heads"))
    config = linear_config.get_preset(name).override(**fields)
    return linear_run.run_linear(checkpoint, config, out, preset=name)
