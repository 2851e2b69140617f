"""``deepcluster benchmark ...``: k-NN, linear probes, VOC07 SVM and low-shot SVM; ``results``
and ``data make-voc``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ..report import console
from . import main

DATA_HELP = "fashion-mnist, mnist, digits, idx:DIR, or a path (class folders, list file, image folder)"


@main.group()
def benchmark() -> None:
    """Evaluate frozen features."""


@benchmark.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", default="fashion-mnist", show_default=True, help=DATA_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--random-init", is_flag=True, help="evaluate the same network untrained")
@click.option("--baselines", is_flag=True, help="add rows for random init and raw pixels")
@click.option("--k", default=20, show_default=True, help="neighbours")
@click.option("--temperature", default=0.07, show_default=True)
@click.option("--workers", default=0, show_default=True)
def knn(checkpoint, data, out, random_init, baselines, k, temperature, workers) -> None:
    """Weighted k-NN top-1 on the test split, from train-split features."""
    from ..benchmarks.knn import run_knn

    results = run_knn(checkpoint, data, out, random_init=random_init, baselines=baselines, k=k,
                      temperature=temperature, workers=workers)
    console.print(knn_table(results))
    console.print(f"results: {Path(out) / 'results.json'}")


def knn_table(results: dict) -> Table:
    table = Table(title=f"k-NN (k={results['k']}, T={results['temperature']}) on {results['data']} test")
    for column in ("features", "dim", "top-1 %", "seconds"):
        table.add_column(column, justify="right" if column != "features" else "left")
    for row in results["rows"]:
        table.add_row(row["features"], str(row["dim"]), f"{row['top1']:.2f}", f"{row['seconds']:.0f}")
    return table



# Linear benchmark and the results table (issue #3).
from ..benchmarks.linear import linear_command  # noqa: E402
benchmark.add_command(linear_command, "linear")
from ..results import results_command  # noqa: E402
main.add_command(results_command, "results")

# VOC07 SVM and low-shot SVM benchmarks, and make-voc (issue #4).
from ..benchmarks.svm import lowshot_command, svm_command  # noqa: E402
from ..voc import data_group  # noqa: E402
benchmark.add_command(svm_command, "svm")
benchmark.add_command(lowshot_command, "lowshot")
main.add_command(data_group, "data")
