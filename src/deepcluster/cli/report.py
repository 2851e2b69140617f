"""``deepcluster report`` (the HTML report of a pretraining run) and ``deepcluster cluster`` (the
cluster explorer: any image folder sorted into clusters with a trained network)."""

from __future__ import annotations

import click

from ..console import console
from . import main


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="folder of the page and its PNGs [RUN_DIR/report]")
@click.option("--results", "results", multiple=True, type=click.Path(exists=True),
              help="more benchmark results (a results.json or a folder of them) to show; "
                   "those under RUN_DIR are found without it (repeatable)")
@click.option("--grids/--no-grids", default=True, show_default=True,
              help="image grids of the last clustering (DeepCluster: one extraction pass of "
                   "the training images)")
@click.option("--largest", default=12, show_default=True, help="largest clusters shown")
@click.option("--random", "random_clusters", default=4, show_default=True,
              help="clusters chosen at random shown besides")
@click.option("--seed", default=0, show_default=True, help="seed of the random choices")
def report(run_dir: str, out: str | None, results: tuple[str, ...], grids: bool, largest: int,
           random_clusters: int, seed: int) -> None:
    """Write RUN_DIR's report: curves, cluster sizes, cluster image grids, benchmarks, config."""
    from ..run_report import write_report

    page = write_report(run_dir, out, results, grids=grids, largest=largest,
                        random=random_clusters, seed=seed)
    console.print(f"report: {page}")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="a pretraining checkpoint")
@click.option("--data", required=True, help="an image folder (or class folders, a list file)")
@click.option("--k", required=True, type=click.IntRange(min=2), help="number of clusters")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--copy", is_flag=True, help="copy the images into the cluster folders instead "
              "of linking them")
@click.option("--pca-dim", type=click.IntRange(min=1), default=None,
              help="PCA-whitening dimension [the checkpoint's, or 64]")
@click.option("--kmeans-iters", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True)
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="data-loading worker processes")
@click.option("--skip-unreadable", is_flag=True, help="drop unreadable images instead of failing")
@click.option("--feature-memory-gb", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="full-width features held in memory up to this, spilled to a temporary "
                   "file beyond")
@click.option("--largest", default=24, show_default=True, help="largest clusters on the page")
@click.option("--random", "random_clusters", default=4, show_default=True,
              help="clusters chosen at random on the page besides")
def cluster(checkpoint: str, data: str, k: int, out: str, copy: bool, pca_dim: int | None,
            kmeans_iters: int, seed: int, batch_size: int, workers: int, skip_unreadable: bool,
            feature_memory_gb: float, largest: int, random_clusters: int) -> None:
    """Sort the images of --data into K clusters with a trained network: clusters.csv, one
    folder per cluster, and a page of image grids."""
    from ..explorer import explore

    explored = explore(checkpoint, data, k, out, copy=copy, pca_dim=pca_dim,
                       iterations=kmeans_iters, seed=seed, batch_size=batch_size,
                       workers=workers, skip_unreadable=skip_unreadable,
                       feature_memory_gb=feature_memory_gb, largest=largest,
                       random=random_clusters)
    console.print(f"{len(explored.paths)} images in {k} clusters: {explored.csv}, "
                  f"{explored.out / 'clusters'}; page: {explored.page}")
