"""``deepcluster pretrain``, ``presets``, ``demo``, ``extract`` and ``train-supervised``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
from rich.table import Table

from ..checkpoint import load_checkpoint, save_json
from ..config import METHODS, PretrainConfig, default_of, load_yaml_config, uses
from ..engine import pretrain as run_pretrain
from ..engine.checkpoints import checkpoint_path
from ..engine.resume import find_checkpoint, resumed_config
from ..presets import DEFAULT_PRESET, DEFAULT_V2_PRESET, PRESETS, default_preset, get_preset
from ..console import console
from . import main
from .benchmark import knn_table
from .interop import checkpoint_format_option

DATA_HELP = "fashion-mnist, mnist, digits, idx:DIR, or a path (class folders, list file, image folder)"

def _config_options(command):
    """One ``--name`` option per PretrainConfig field; unset options keep the preset's (or the
    config file's, or the resumed checkpoint's) value."""
    for spec in reversed(dataclasses.fields(PretrainConfig)):
        flag = spec.name.replace("_", "-")
        used_by = "" if spec.metadata["methods"] == METHODS else f" ({uses(spec)} only)"
        resumable = "; may change on resume" if spec.metadata["resume"] else ""
        choices = spec.metadata["choices"]
        one_of = f": {', '.join(choices)}" if choices and spec.name != "method" else ""
        help_text = (f"{spec.metadata['help']}{one_of}{used_by} "
                     f"[default: {default_of(spec.name)}{resumable}]")
        if spec.type in ("bool", bool):
            option = click.option(f"--{flag}/--no-{flag}", spec.name, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[spec.type]
            option = click.option(f"--{flag}", spec.name, type=kind, default=None, help=help_text)
        command = option(command)
    return command


@main.command()
@click.option("--preset", default=None, type=click.Choice(sorted(PRESETS)),
              help=f"named recipe to start from [{DEFAULT_PRESET}; {DEFAULT_V2_PRESET} for "
                   "--method deepcluster-v2]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="a YAML config to start from (e.g. a run's config.yaml); flags override it")
@click.option("--resume", help="continue a run: its checkpoint, its run folder, or 'auto' (the "
              "last checkpoint of --out, if any; else a fresh start). Only the fields that may "
              "change on resume may be given with it")
@_config_options
def pretrain(preset: str | None, config_file: str | None, resume: str | None, **overrides) -> None:
    """Train a network with DeepCluster, DeepCluster-v2 or the supervised baseline."""
    config, checkpoint = run_config(preset, config_file, resume, overrides)
    result = run_pretrain(config, resume=checkpoint)
    if result.rank == 0:
        console.print(f"checkpoint: {result.checkpoint}")


def run_config(preset: str | None, config_file: str | None, resume: str | None,
                overrides: dict) -> tuple[PretrainConfig, Path | None]:
    """The run's config and the checkpoint it resumes (None: a fresh run)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if resume is not None and (preset or config_file):
        raise click.UsageError("--resume continues a run with its own config; drop --preset/--config")
    # without --preset, the method's own default preset (deepcluster-v2: fashion-mnist-v2)
    method = given.get("method") or (load_yaml_config(config_file).method if config_file else None)
    start = get_preset(preset or default_preset(method))
    base = load_yaml_config(config_file, start) if config_file else start
    if resume is not None:
        out = given.get("out", base.out)
        checkpoint = find_checkpoint(resume, out)
        if checkpoint is not None:
            return resumed_config(checkpoint, given), checkpoint
    config = base.override(**given)
    last = checkpoint_path(config.out)
    if last.exists():
        raise click.ClickException(f"{config.out} already holds a run ({last}); pass --resume auto "
                                   f"(or --resume {last}) to continue it, or another --out")
    return config, None


@main.command()
def presets() -> None:
    """List the named pretraining presets."""
    table = Table(title="presets")
    for column in ("preset", "method", "data", "arch", "sobel", "size", "k", "epochs", "batch",
                   "lr"):
        table.add_column(column)
    for name, c in PRESETS.items():
        table.add_row(name, c.method, c.data, c.arch, str(c.sobel), str(c.image_size),
                      str(c.k or "-"), str(c.epochs), str(c.batch_size), str(c.lr))
    console.print(table)


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="this tool's checkpoint, or any layout 'convert' reads (docs/interop.md)")
@checkpoint_format_option
@click.option("--data", required=True, help=DATA_HELP)
@click.option("--split", default="train", type=click.Choice(["train", "test"]), show_default=True)
@click.option("--layer", default="global", show_default=True,
              type=click.Choice(["global", "avgpool", "feature1", "feature2", "feature3",
                                 "feature4", "feature5"]),
              help="global: the clustered feature; avgpool: the last stage averaged; featureN: "
                   "a stage's map pooled to the benchmark grid, flattened")
@click.option("--random-init", is_flag=True, help="the same network untrained")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--workers", default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="an .npz file with 'features' (float32), 'labels' (-1: none) and, for image "
                   "files, 'paths' (the row order: sorted for a folder)")
def extract(checkpoint, data, split, layer, random_init, batch_size, workers, out) -> None:
    """Extract features of a dataset with a pretrained (or random-init) backbone, in fp32 with
    the checkpoint's evaluation transform (imported ImageNet weights: 256, centre 224)."""
    import numpy as np

    from ..checkpoint import backbone_from_checkpoint, save_npz
    from ..datasets import load_dataset
    from ..features import extract, make_loader, pooled_map
    from ..transforms import extraction_transform

    backbone, config = backbone_from_checkpoint(checkpoint, random_init=random_init)
    dataset = load_dataset(data, split).with_transform(extraction_transform(config.image_size))
    features, labels = extract(pooled_map(backbone, layer), make_loader(dataset, batch_size, workers),
                               backbone_device(backbone), desc=f"extract {layer}")
    paths = getattr(dataset, "paths", None)
    extra = {"paths": np.asarray([str(p) for p in paths])} if paths is not None else {}
    save_npz(out, features=features.astype(np.float32, copy=False), labels=labels, **extra)
    console.print(f"{out}: features {features.shape[0]} x {features.shape[1]} ({layer}, {split})")


def backbone_device(backbone):
    return next(backbone.parameters()).device


DEMO_METHODS = {"v1": DEFAULT_PRESET, "v2": DEFAULT_V2_PRESET}


@main.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--methods", default="v1,v2", show_default=True,
              help="which to pretrain: v1 (the default preset), v2 (DeepCluster-v2), or both")
@click.option("--epochs", type=int, default=None, help="override the presets' epochs")
@click.option("--precision", default=None, help="override the presets' auto (bf16-mixed where the "
              "chip has bf16 arithmetic, else 32-true), for the pretraining and the k-NN's "
              "extraction")
def demo(out: str, methods: str, epochs: int | None, precision: str | None) -> None:
    """The quick start: pretrain DeepCluster (and DeepCluster-v2) with the default presets, then
    k-NN against random init and raw pixels."""
    import time

    from ..benchmarks.knn import run_knn
    from ..run_report import write_report

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in DEMO_METHODS]
    if unknown or not chosen:
        raise click.BadParameter(f"{methods!r}: choose from {', '.join(DEMO_METHODS)}",
                                 param_hint="--methods")
    rows, seconds, reports = [], {}, []
    for index, method in enumerate(chosen):
        # No online k-NN during the demo's runs: the table below measures it once, at the end.
        config = get_preset(DEMO_METHODS[method]).override(
            out=str(Path(out) / ("pretrain" if method == "v1" else f"pretrain-{method}")),
            epochs=epochs, precision=precision, knn_every=0)
        start = time.perf_counter()
        checkpoint = _pretrain_or_reuse(config)
        seconds[method] = time.perf_counter() - start
        # The k-NN's extraction in the run's precision: bf16 where it trained in bf16.
        results = run_knn(checkpoint, config.data, Path(out) / f"knn-{method}",
                          baselines=index == 0, precision=config.precision)
        results["rows"][0]["features"] = ("DeepCluster" if method == "v1" else "DeepCluster-v2")
        rows.insert(index, results["rows"][0])
        rows.extend(results["rows"][1:])
        reports.append(write_report(config.out, results=[Path(out) / f"knn-{method}"]))
    summary = {**results, "rows": rows, "pretrain_seconds": seconds}
    save_json(summary, Path(out) / "knn" / "results.json")
    console.print(knn_table(summary))
    console.print("pretraining took " + ", ".join(f"{m} {s:.0f} s" for m, s in seconds.items()) +
                  f"; results in {out}")
    for page in reports:
        console.print(f"report: {page}")


def _pretrain_or_reuse(config: PretrainConfig) -> Path:
    """Pretrain ``config``, resume it if interrupted, or reuse it if finished."""
    last = Path(config.out) / "checkpoints" / "last.ckpt"
    if not last.exists():
        run_pretrain(config)
    elif load_checkpoint(last)["epoch"] < config.epochs:
        run_pretrain(config, resume=last)
    else:
        console.print(f"reusing the finished run in {config.out} (delete it to train again)")
    return last




@main.command("train-supervised")
@click.option("--like", "checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="a pretraining checkpoint whose architecture (and seed) to train")
@checkpoint_format_option
@click.option("--data", default=None, help="labelled training data [the checkpoint's]")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--epochs", default=5, show_default=True)
@click.option("--lr", default=0.05, show_default=True)
@click.option("--weight-decay", default=5e-4, show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--subset", default=0, show_default=True, help="first N training images (0: all)")
@click.option("--workers", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True, help="torch CPU threads (0: the checkpoint's)")
def train_supervised_command(checkpoint, data, out, epochs, lr, weight_decay, batch_size, subset,
                             workers, threads) -> None:
    """Train the same network with labels: the 'supervised' baseline row of every benchmark."""
    from ..api import train_supervised

    path = train_supervised(checkpoint, out, data=data, epochs=epochs, lr=lr,
                            weight_decay=weight_decay, batch_size=batch_size, subset=subset,
                            workers=workers, threads=threads)
    console.print(f"checkpoint: {path}")
