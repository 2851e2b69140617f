"""The k-NN of what a checkpoint's method puts after its backbone, beside the backbone's own.

The benchmarks judge the backbone's global feature (AvgPool). DeepCluster-v2 trains that
feature through a projector (Linear, BatchNorm, ReLU, Linear) whose L2-normalised output is what
it clusters and what its loss shapes; v1 with ``head_hidden`` puts a hidden layer (Linear,
BatchNorm, ReLU) between the backbone and its classifier, but clusters the backbone's feature
itself. For every checkpoint: the weighted k-NN (``benchmark knn``'s: k = 20, cosine, T = 0.07,
train split as memory, test split judged) of the backbone's feature and of each stage after it,
in eval mode, on ``--data`` (docs/study.md, session 19: where v2's neighbourhoods form).
Prints a table and writes JSON.

    python bench/head_knn.py runs/budget/v2-s18-60/pretrain/checkpoints/epoch_00{3,9}.ckpt
"""

from __future__ import annotations

import argparse
import warnings
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from deepcluster.benchmarks.knn import knn_top1, network_features
from deepcluster.checkpoint import backbone_from_checkpoint, load_checkpoint, save_json
from deepcluster.config import PretrainConfig
from deepcluster.models import DeepClusterModel
from deepcluster.methods.deepcluster_v2 import DeepClusterV2Model, set_sizes


def stages_after_backbone(state: dict, config: PretrainConfig, backbone: nn.Module
                          ) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Name -> function from the backbone's feature to that stage's output, for the checkpoint's
    method (empty for a method with nothing after its backbone)."""
    if "projector" in state:
        sizes = set_sizes(config.k, config.prototype_sets, config.k_factor)
        model = DeepClusterV2Model(backbone, config.projection_hidden, config.projection_dim, sizes)
        model.projector.load_state_dict(state["projector"])
        projector = model.projector.eval()
        return {"projector hidden": projector[:3], "embedding": projector}
    if "hidden" in state:
        model = DeepClusterModel(backbone, config.k, config.head_hidden, config.head_layers)
        model.hidden.load_state_dict(state["hidden"])
        hidden = model.hidden.eval()
        relu = backbone.relu_before_head
        return {"hidden layer": lambda f: hidden(torch.relu(f) if relu else f)}
    return {}


@torch.no_grad()
def stage_scores(checkpoint: str, data: str) -> dict[str, float]:
    """k-NN top-1 of the backbone and of each stage after it."""
    state = load_checkpoint(checkpoint)
    backbone, config = backbone_from_checkpoint(checkpoint)
    train, train_labels = network_features(backbone, config.image_size, data, "train")
    test, test_labels = network_features(backbone, config.image_size, data, "test")
    scores = {"backbone": knn_top1(train, train_labels, test, test_labels)}
    for name, stage in stages_after_backbone(state, config, backbone).items():
        def apply(features: np.ndarray) -> np.ndarray:
            return stage(torch.from_numpy(features).float()).numpy()
        scores[name] = knn_top1(apply(train), train_labels, apply(test), test_labels)
    return {"method": config.method, "epoch": int(state["epoch"]), **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--json", default="bench/results/head-knn.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    for checkpoint in args.checkpoints:
        rows.append({"checkpoint": checkpoint, "data": args.data, **stage_scores(checkpoint, args.data)})
        print(rows[-1], flush=True)
    columns = ["backbone", "hidden layer", "projector hidden", "embedding"]
    table = Table(title=f"k-NN top-1 on {args.data} of each stage")
    for heading in ["checkpoint", "epoch", *columns]:
        table.add_column(heading)
    for row in rows:
        table.add_row(row["checkpoint"], str(row["epoch"]),
                      *[f"{row[c]:.2f}" if c in row else "-" for c in columns])
    Console().print(table)
    save_json({"benchmark": "k-NN of each stage after the backbone", "rows": rows}, args.json)


if __name__ == "__main__":
    main()
