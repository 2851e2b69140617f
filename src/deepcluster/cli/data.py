"""``deepcluster data ...``: preparing benchmark data (``make-voc``)."""

from __future__ import annotations

import click

from ..console import console
from ..voc import VOC_CLASSES, read_voc
from ..voc_generator import make_voc
from . import main


@main.group("data")
def data_group() -> None:
    """Prepare benchmark data."""


@data_group.command("make-voc")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="folder to write (the devkit goes to OUT/VOC2007)")
@click.option("--trainval", default=500, show_default=True, help="trainval images")
@click.option("--test", default=400, show_default=True, help="test images")
@click.option("--seed", default=0, show_default=True)
@click.option("--width", default=112, show_default=True)
@click.option("--height", default=96, show_default=True)
def make_voc_command(out, trainval, test, seed, width, height) -> None:
    """A small multi-label dataset in the VOC2007 devkit layout (Fashion-MNIST items pasted on
    scikit-image photos), so that the SVM benchmarks run end to end here."""
    root = make_voc(out, trainval=trainval, test=test, seed=seed, width=width, height=height)
    summary = []
    for split in ("trainval", "test"):
        voc = read_voc(root, split)
        present = [name for name, n in zip(VOC_CLASSES, voc.positives_per_class()) if n]
        summary.append(f"{split}: {len(voc)} images, {len(present)} classes present, "
                       f"{int(voc.difficult.sum())} difficult-only labels")
    console.print(f"{root}\n  " + "\n  ".join(summary))
