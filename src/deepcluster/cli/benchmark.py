"""``deepcluster benchmark ...``: k-NN, linear probes, VOC07 SVM and low-shot SVM; and
``deepcluster results``, which gathers linear-benchmark runs into one table."""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
from rich.markdown import Markdown
from rich.table import Table

from ..benchmarks.knn import run_knn
from ..benchmarks.linear_config import (DEFAULT_PRESET, HEAD_SETS, PRESETS, LinearConfig,
                                        default_preset, get_preset)
from ..benchmarks.linear_run import results_table, run_linear
from ..benchmarks.svm import COST_LISTS, DEFAULT_COSTS, LAYERS, LOWSHOT_KS, LOWSHOT_SAMPLES
from ..benchmarks.svm_run import run_lowshot, run_svm
from ..checkpoint import atomic_write
from ..config import PRECISIONS
from ..console import console
from ..results import gather, load_results, render
from . import main
from .interop import checkpoint_format_option

DATA_HELP = "fashion-mnist, mnist, digits, idx:DIR, or a path (class folders, list file, image folder)"


@main.group()
def benchmark() -> None:
    """Evaluate frozen features."""


# ----------------------------------------------------------------------------------------------
# k-NN


@benchmark.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@checkpoint_format_option
@click.option("--data", default="fashion-mnist", show_default=True, help=DATA_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--random-init", is_flag=True, help="evaluate the same network untrained")
@click.option("--baselines", is_flag=True, help="add rows for random init and raw pixels")
@click.option("--k", default=20, show_default=True, help="neighbours")
@click.option("--temperature", default=0.07, show_default=True)
@click.option("--workers", default=0, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="32-true", show_default=True,
              help="of the extraction passes (auto: bf16 where the chip computes in it natively)")
def knn(checkpoint, data, out, random_init, baselines, k, temperature, workers, precision) -> None:
    """Weighted k-NN top-1 on the test split, from train-split features."""
    results = run_knn(checkpoint, data, out, random_init=random_init, baselines=baselines, k=k,
                      temperature=temperature, workers=workers, precision=precision)
    console.print(knn_table(results))
    console.print(f"results: {Path(out) / 'results.json'}")


def knn_table(results: dict) -> Table:
    table = Table(title=f"k-NN (k={results['k']}, T={results['temperature']}) on {results['data']} test")
    for column in ("features", "dim", "top-1 %", "seconds"):
        table.add_column(column, justify="right" if column != "features" else "left")
    for row in results["rows"]:
        table.add_row(row["features"], str(row["dim"]), f"{row['top1']:.2f}", f"{row['seconds']:.0f}")
    return table


# ----------------------------------------------------------------------------------------------
# Linear probes, and the table of several linear runs


def _linear_config_options(command):
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


@benchmark.command("linear")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@checkpoint_format_option
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
@click.option("--restart", is_flag=True, help="discard the probe state a killed run left in "
              "OUT and start again (without it, a state of the same config and checkpoint is "
              "continued and one of another is refused)")
@_linear_config_options
def linear_command(checkpoint, data, heads, preset, out, random_init, label, restart, milestones,
                   **overrides) -> None:
    """Linear probes on frozen features: top-1/top-5 per head on the validation split. A run
    killed before continues from its last finished epoch (OUT/probe_state.ckpt)."""
    preset = preset or default_preset(data, heads)
    config = get_preset(preset).override(data=data, heads=heads,
                                         milestones=parse_milestones(milestones), **overrides)
    console.print(f"preset {preset}: {config.heads} heads, {config.epochs} epochs, "
                  f"{'cached' if config.cached else 'streamed'} features")
    results = run_linear(checkpoint, config, out, random_init=random_init, label=label,
                         preset=preset, restart=restart)
    console.print(results_table(results))
    console.print(f"results: {Path(out) / 'results.json'}")


@main.command("results")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", type=click.Path(dir_okay=False), help="also write the Markdown to this file")
@click.option("--metric", type=click.Choice(["top1", "top5", "both"]), default="both",
              show_default=True)
def results_command(runs: tuple[str, ...], out: str | None, metric: str) -> None:
    """Gather linear-benchmark runs (folders or results.json files) into one Markdown table."""
    rows = gather([load_results(run) for run in runs])
    text = render(rows, ("top1", "top5") if metric == "both" else (metric,))
    console.print(text, markup=False, highlight=False)
    if out:
        atomic_write(out, lambda temp: Path(temp).write_text(text))
        console.print(f"written to {out}")


# ----------------------------------------------------------------------------------------------
# VOC07 SVM and low-shot SVM


def _svm_common_options(command):
    options = [
        click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
                     help="pretraining checkpoint"),
        click.option("--voc", required=True, type=click.Path(exists=True, file_okay=False),
                     help="VOC2007 devkit folder (VOCdevkit or VOCdevkit/VOC2007)"),
        click.option("--out", required=True, type=click.Path(file_okay=False),
                     help="output folder: results.json, results.md, features/ (the cache)"),
        click.option("--costs", default=DEFAULT_COSTS, show_default=True,
                     type=click.Choice(sorted(COST_LISTS)), help="SVM cost list"),
        click.option("--random-init", is_flag=True, help="evaluate the same network untrained"),
        click.option("--baselines", is_flag=True, help="also evaluate random init (second row)"),
        click.option("--image-size", type=int, default=None,
                     help="resize images to this square size [224; small networks: their own]"),
        click.option("--jobs", default=-1, show_default=True,
                     help="SVM worker processes (-1: all cores)"),
        click.option("--batch-size", type=int, default=None, help="extraction batch size"),
        click.option("--workers", default=0, show_default=True, help="data-loading workers"),
        click.option("--cache", type=click.Path(file_okay=False), default=None,
                     help="feature cache folder [OUT/features]"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _print_svm_results(results: dict[str, Any], out: str) -> None:
    console.print(Markdown(results["markdown"]))
    console.print(f"results: {Path(out) / 'results.json'}, {Path(out) / 'results.md'}")


@benchmark.command("svm")
@_svm_common_options
@checkpoint_format_option
@click.option("--layers", default="all", show_default=True,
              help="comma-separated subset of " + ", ".join(LAYERS))
def svm_command(layers, **options) -> None:
    """VOC07 linear SVM: cost by 3-fold CV AP on trainval, refit, VOC AP on test."""
    start = time.perf_counter()
    results = run_svm(layers=layers, **options)
    _print_svm_results(results, options["out"])
    console.print(f"took {time.perf_counter() - start:.0f} s")


@benchmark.command("lowshot")
@_svm_common_options
@checkpoint_format_option
@click.option("--layers", default="auto", show_default=True,
              help="comma-separated subset of " + ", ".join(LAYERS) +
              "; auto: the best SVM layer when OUT holds SVM results, else all")
@click.option("--ks", default=",".join(map(str, LOWSHOT_KS)), show_default=True,
              help="positives per class")
@click.option("--samples", default=LOWSHOT_SAMPLES, show_default=True,
              help="independent samples per k")
@click.option("--seed", default=0, show_default=True, help="seed of the samples")
def lowshot_command(layers, ks, samples, seed, **options) -> None:
    """Low-shot VOC07 SVM: k positives and 19k negatives per class, 5 seeded samples."""
    start = time.perf_counter()
    results = run_lowshot(layers=layers, ks=ks, samples=samples, seed=seed, **options)
    _print_svm_results(results, options["out"])
    console.print(f"took {time.perf_counter() - start:.0f} s")


# ----------------------------------------------------------------------------------------------
# Every benchmark of the published tables


def _voc_images(text: str) -> tuple[int, int]:
    try:
        trainval, test = (int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected TRAINVAL,TEST image counts, e.g. 500,400",
                                 param_hint="--voc-images") from None
    return trainval, test


@benchmark.command("all")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="this tool's checkpoint or any layout 'convert' reads")
@checkpoint_format_option
@click.option("--voc", type=click.Path(exists=True, file_okay=False), help="VOC2007 devkit")
@click.option("--imagenet", type=click.Path(exists=True, file_okay=False), help="ImageNet root")
@click.option("--places205", type=click.Path(exists=True, file_okay=False), help="Places205 root")
@click.option("--inat2018", type=click.Path(exists=True, file_okay=False),
              help="iNaturalist 2018 root")
@click.option("--data", default=None, help="small versions on this labelled data (e.g. "
              "fashion-mnist): its linear probe, and the SVMs on generated VOC-format data "
              "when --voc is not given")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="one folder per benchmark, suite.json (resume) and benchmarks.md")
@click.option("--costs", default=DEFAULT_COSTS, show_default=True,
              type=click.Choice(sorted(COST_LISTS)), help="SVM cost list")
@click.option("--svm-layers", default="all", show_default=True,
              help="the SVM's layers (the best of them goes to the low-shot SVM): all, or "
                   "comma-separated of " + ", ".join(LAYERS))
@click.option("--ks", default=None, help="low-shot k values [1,2,4,8,16,32,64,96]")
@click.option("--samples", type=int, default=None, help=f"low-shot samples [{LOWSHOT_SAMPLES}]")
@click.option("--epochs", type=int, default=None, help="every linear probe's epochs [presets']")
@click.option("--subset", type=int, default=None, help="linear probes: first N training images")
@click.option("--test-subset", type=int, default=None, help="linear probes: first N validation "
              "images")
@click.option("--voc-images", default="500,400", show_default=True,
              help="trainval,test images of the generated VOC-format data (--data only)")
@click.option("--jobs", default=-1, show_default=True, help="SVM worker processes")
@click.option("--workers", type=int, default=None, help="data-loading workers [presets']")
@click.option("--batch-size", type=int, default=None, help="SVM feature extraction batch size")
@click.option("--threads", type=int, default=None, help="torch CPU threads of the probes")
def all_command(checkpoint, voc, imagenet, places205, inat2018, data, out, voc_images,
                **options) -> None:
    """Every benchmark of the published tables for the datasets given, one Markdown file
    (OUT/benchmarks.md) with the published ResNet-50 Sobel row beside; resumable."""
    from ..benchmarks.suite import REPORT_FILE, SuiteOptions, run_suite

    start = time.perf_counter()
    datasets = {"voc": voc, "imagenet": imagenet, "places205": places205, "inat2018": inat2018,
                "data": data}
    run_suite(checkpoint, out, datasets,
              SuiteOptions(voc_images=_voc_images(voc_images), **options), log=console.print)
    report = Path(out) / REPORT_FILE
    console.print(Markdown(report.read_text()))
    console.print(f"report: {report} ({time.perf_counter() - start:.0f} s)")
