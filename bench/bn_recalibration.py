"""Does multi-crop spoil the backbone's BatchNorm statistics? A diagnostic of issue 15.

DeepCluster-v2 forwards its 28 px and 12 px crops in separate passes, so the backbone's running
BatchNorm statistics mix both sizes, while every benchmark extracts 28 px images in eval mode.
This script re-estimates the statistics of a checkpoint's backbone on clean 28 px training
images (``--batches`` batches of 500, cumulative average, no gradient), then judges the backbone
before and after as ``bench/ablation.py`` does (k-NN top-1 and AvgPool linear probe top-1 on
Fashion-MNIST test). Prints a table and writes JSON.

    python bench/bn_recalibration.py runs/study/v2-seed0/pretrain/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import warnings

import torch
from rich.console import Console
from rich.table import Table

from ablation import evaluate_backbone  # bench/ablation.py, beside this script
from deepcluster.checkpoint import backbone_from_checkpoint, save_json
from deepcluster.datasets import load_dataset
from deepcluster.transforms import extraction_set


@torch.no_grad()
def recalibrate(backbone: torch.nn.Module, image_size: int, batches: int, seed: int = 0) -> None:
    """Replace every BatchNorm2d's running statistics by their average over ``batches`` shuffled
    batches of 500 clean training images."""
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the batches
    images, batch_transform = extraction_set(load_dataset("fashion-mnist", "train"), image_size)
    loader = torch.utils.data.DataLoader(images, batch_size=500, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    backbone.train()
    for index, (x, _) in enumerate(loader):
        if index == batches:
            break
        backbone(batch_transform(x))
    backbone.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", default="bench/results/bn_recalibration.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone, config = backbone_from_checkpoint(args.checkpoint)
    before = evaluate_backbone(backbone, config.image_size)
    recalibrate(backbone, config.image_size, args.batches)
    after = evaluate_backbone(backbone, config.image_size)
    rows = [{"statistics": name, "knn_top1": knn, "linear_top1": linear}
            for name, (knn, linear) in (("as trained", before), ("re-estimated on 28 px", after))]
    save_json({"checkpoint": args.checkpoint, "batches": args.batches, "rows": rows}, args.json)
    table = Table(title=f"BatchNorm statistics of {args.checkpoint}")
    for column in ("statistics", "k-NN top-1", "linear top-1"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row["statistics"], f"{row['knn_top1']:.2f}", f"{row['linear_top1']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
