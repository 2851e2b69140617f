"""Which classes a checkpoint's k-NN confuses, beside the same network untrained.

For each checkpoint: the weighted k-NN (``benchmark knn``'s: k = 20, cosine, T = 0.07) of the
backbone's global feature on ``--data`` (train split as memory, test split judged), once trained
and once at random init, and the class pairs confused most often (either way round). Shows what
a network pretrained on one set loses on another (docs/study.md, session 16: the MNIST transfer).
Prints a table and writes JSON.

    python bench/knn_confusions.py runs/demo/pretrain/checkpoints/last.ckpt --data mnist
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.metrics import confusion_matrix

from deepcluster.benchmarks.knn import (DEFAULT_K, DEFAULT_TEMPERATURE, network_features,
                                        weighted_knn_predict)
from deepcluster.checkpoint import backbone_from_checkpoint, load_checkpoint, save_json


def confusions(checkpoint: str, data: str, random_init: bool, pairs: int) -> dict:
    """Top-1 and the ``pairs`` class pairs confused most often, with their counts."""
    backbone, config = backbone_from_checkpoint(checkpoint, random_init=random_init)
    train = network_features(backbone, config.image_size, data, "train")
    test_features, test_labels = network_features(backbone, config.image_size, data, "test")
    predicted = weighted_knn_predict(*train, test_features)
    classes = int(max(train[1].max(), test_labels.max())) + 1
    matrix = confusion_matrix(test_labels, predicted, labels=range(classes))
    both_ways = [(int(matrix[i, j] + matrix[j, i]), i, j)
                 for i in range(classes) for j in range(i + 1, classes)]
    return {"top1": float((predicted == test_labels).mean() * 100),
            "errors": int(len(test_labels) - np.trace(matrix)),
            "pairs": [{"classes": [i, j], "count": count}
                      for count, i, j in sorted(both_ways, reverse=True)[:pairs]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--pairs", type=int, default=5, help="how many class pairs to show")
    parser.add_argument("--json", default="bench/results/knn-confusions.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows, untrained = [], set()
    for checkpoint in args.checkpoints:
        config = load_checkpoint(checkpoint)["config"]
        start = (config.get("arch"), config.get("sobel"), config.get("seed"))
        if start not in untrained:  # the same network untrained: judged once
            untrained.add(start)
            rows.append({"checkpoint": checkpoint, "random_init": True,
                         **confusions(checkpoint, args.data, True, args.pairs)})
        rows.append({"checkpoint": checkpoint, "random_init": False,
                     **confusions(checkpoint, args.data, False, args.pairs)})
    table = Table(title=f"k-NN on {args.data}: the class pairs confused most often")
    for column in ("checkpoint", "top-1", "errors", "pairs (count)"):
        table.add_column(column)
    for row in rows:
        name = "random init" if row["random_init"] else row["checkpoint"]
        pairs = ", ".join(f"{i}-{j} ({p['count']})" for p in row["pairs"] for i, j in [p["classes"]])
        table.add_row(name, f"{row['top1']:.2f}", str(row["errors"]), pairs)
    Console().print(table)
    save_json({"data": args.data, "k": DEFAULT_K, "temperature": DEFAULT_TEMPERATURE,
               "rows": rows}, args.json)


if __name__ == "__main__":
    main()
