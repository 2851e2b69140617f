"""The feature-quality study of issue 15: levers of DeepCluster v1 and v2 on Fashion-MNIST.

Every row is a preset with some fields changed and a number of epochs, pretrained with the
project's own ``pretrain``, then judged as in ``bench/ablation.py``: weighted k-NN top-1 and the
AvgPool linear probe top-1 on Fashion-MNIST test from the backbone's global feature, NMI of the
last clustering with the labels, and, with ``--transfer``, the k-NN top-1 on MNIST (features
learned on Fashion-MNIST, judged on digits). The seconds of pretraining come from the run's own
``metrics.csv`` (train, extraction and clustering; the online k-NN is off). Runs already
finished in ``--out`` are reused, so the study resumes where it stopped and grows as seeds are
added. Prints a table (mean ± standard deviation over seeds) and writes JSON.

    python bench/study.py --rows v2,v2-clean,v2-backbone --seeds 0,1 --threads 1
    python bench/study.py --table-only --markdown
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ablation import avgpool_probe_top1  # bench/ablation.py, beside this script
from deepcluster.benchmarks.knn import knn_top1, network_features
from deepcluster.checkpoint import backbone_from_checkpoint, load_checkpoint, save_json
from deepcluster.engine import pretrain
from deepcluster.models import build_backbone
from deepcluster.presets import get_preset

V1, V2 = "fashion-mnist", "fashion-mnist-v2"
# Fields every row of a preset starts from. The presets have changed since the rows were measured
# (v1: PCA 128, the v1-pca128 rows; a hidden layer, the v1-h512 rows; crops of 50-100 %, the
# crop0.5 rows; v2: k = 300, the v2b-k300 row; its crops, the v2b-k300-crop0.5-smallscale row;
# the backbone's clustering in 2 epochs, the v2b-k300-crop0.5-smallscale-bankbackbone-2ep row),
# so the rows keep the earlier values and stay reproducible.
BASE: dict[str, dict[str, Any]] = {V1: {"pca_dim": 64, "head_hidden": 0, "crop_min_scale": 0.0},
                                   V2: {"k": 100, "crop_min_scale": 0.0, "small_crop_min_scale": 0.0,
                                        "small_crop_max_scale": 0.0, "bank": "training"}}
# The v2 preset since session 19: every clustering is of the backbone, with its crops and k
BANK_BACKBONE: dict[str, Any] = {"first_targets": "backbone", "k": 300, "crop_min_scale": 0.5,
                                 "small_crop_min_scale": 0.14, "small_crop_max_scale": 0.5,
                                 "bank": "backbone"}
# The v1 preset of sessions 10 to 15: PCA 128 and a hidden layer of 512
V1_HIDDEN: dict[str, Any] = {"pca_dim": 128, "head_hidden": 512}

# name -> (preset, epochs, changed fields); "random-init" is the untrained network.
ROWS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "random-init": (V1, 0, {}),
    # v1: the default preset before this study (strong augmentation, lr 0.1, k = 100, PCA 64)
    "v1": (V1, 6, {}),
    "v1-lr0.2": (V1, 6, {"lr": 0.2}),
    "v1-lr0.05": (V1, 6, {"lr": 0.05}),
    "v1-k300": (V1, 6, {"k": 300}),
    "v1-pca128": (V1, 6, {"pca_dim": 128}),
    "v1-cosine": (V1, 6, {"lr_schedule": "cosine"}),
    "v1-9ep": (V1, 9, {}),
    "v1-k300-9ep": (V1, 9, {"k": 300}),
    "v1-pca128-9ep": (V1, 9, {"pca_dim": 128}),
    # 1.5x the channels, about 2.25x an epoch's cost
    "v1-wide": (V1, 6, {"arch": "small-cnn-wide"}),
    # half the batch at half the lr (the linear scaling rule): twice the steps per epoch
    "v1-pca128-b128": (V1, 6, {"pca_dim": 128, "batch_size": 128, "lr": 0.05}),
    "v1-h512": (V1, 6, V1_HIDDEN),
    # the smallest crop's area: the strong augmentation's 0.14 raised (session 16)
    "v1-h512-crop0.3": (V1, 6, {**V1_HIDDEN, "crop_min_scale": 0.3}),
    "v1-h512-crop0.5": (V1, 6, {**V1_HIDDEN, "crop_min_scale": 0.5}),
    "v1-h512-crop0.7": (V1, 6, {**V1_HIDDEN, "crop_min_scale": 0.7}),
    # v2: SwAV's recipe at 28 px (the preset before this study: the first targets from the
    # untrained network's bank), 3 epochs, then one lever at a time
    "v2": (V2, 3, {"first_targets": "bank"}),
    "v2-clean": (V2, 3, {"first_targets": "bank", "bank": "clean"}),
    "v2-backbone": (V2, 3, {"first_targets": "backbone"}),  # the preset after the first round
    "v2-clean-backbone": (V2, 3, {"first_targets": "backbone", "bank": "clean"}),
    "v2-no-small": (V2, 3, {"first_targets": "bank", "small_crops": 0}),
    "v2-lr0.05": (V2, 3, {"first_targets": "bank", "lr": 0.05}),
    "v2-warmup1": (V2, 3, {"first_targets": "bank", "warmup_epochs": 1.0}),
    # the second round's v2 levers, each on top of the backbone start ("v2b" = v2-backbone)
    "v2b-warmup1": (V2, 3, {"first_targets": "backbone", "warmup_epochs": 1.0}),
    "v2b-lr0.2": (V2, 3, {"first_targets": "backbone", "lr": 0.2}),
    "v2b-t0.05": (V2, 3, {"first_targets": "backbone", "temperature": 0.05}),
    "v2b-t0.2": (V2, 3, {"first_targets": "backbone", "temperature": 0.2}),
    "v2b-k300": (V2, 3, {"first_targets": "backbone", "k": 300}),  # the preset since round 2
    # more prototypes than 300 (solo-learn's CIFAR recipe: 3 x 3000 for 50k images)
    "v2b-k1000": (V2, 3, {"first_targets": "backbone", "k": 1000}),
    "v2b-k3000": (V2, 3, {"first_targets": "backbone", "k": 3000}),
    # the preset for one more epoch (its cosine schedule sized to 4)
    "v2b-k300-4ep": (V2, 4, {"first_targets": "backbone", "k": 300}),
    # the preset with a constant lr after its warm-up (v1's schedule), and with half the batch at
    # half the lr (twice the steps)
    "v2b-k300-constant": (V2, 3, {"first_targets": "backbone", "k": 300,
                                  "lr_schedule": "constant"}),
    "v2b-k300-b128": (V2, 3, {"first_targets": "backbone", "k": 300, "batch_size": 128,
                              "lr": 0.05}),
    # SwAV's count of small crops (2 large + 6 small on ImageNet) and a count between
    "v2b-k300-small6": (V2, 3, {"first_targets": "backbone", "k": 300, "small_crops": 6}),
    "v2b-k300-small4": (V2, 3, {"first_targets": "backbone", "k": 300, "small_crops": 4}),
    # the first targets (v1's clustering of the untrained backbone) at v1's PCA 128, not 64
    "v2b-k300-pca128": (V2, 3, {"first_targets": "backbone", "k": 300, "pca_dim": 128}),
    # the large crops' smallest area 0.5 instead of 0.14 (session 16)
    "v2b-k300-crop0.5": (V2, 3, {"first_targets": "backbone", "k": 300, "crop_min_scale": 0.5}),
    # and no small crops: at 28 px they hold 6-10 px of the image
    "v2b-k300-crop0.5-small0": (V2, 3, {"first_targets": "backbone", "k": 300,
                                        "crop_min_scale": 0.5, "small_crops": 0}),
    # and small crops of 14-50 % of the image rather than SwAV's 5-14 %: the range below the
    # large crops', as SwAV's small crops take the range below its large crops' 14-100 %
    "v2b-k300-crop0.5-smallscale": (V2, 3, {"first_targets": "backbone", "k": 300,
                                            "crop_min_scale": 0.5, "small_crop_min_scale": 0.14,
                                            "small_crop_max_scale": 0.5}),
    # and every clustering v1's clustering of the backbone, not of the projector's bank (session
    # 19: the embeddings' k-NN is 1.5-2 points below the backbone's at every epoch). Measured
    # when all three prototype sets took the one clustering; one set is the same loss now that
    # each set is its own k-means run.
    "v2b-k300-crop0.5-smallscale-bankbackbone": (V2, 3, {**BANK_BACKBONE, "prototype_sets": 1}),
    # the same in 2 epochs (its cosine sized to 2)
    "v2b-k300-crop0.5-smallscale-bankbackbone-2ep": (V2, 2, {**BANK_BACKBONE,
                                                             "prototype_sets": 1}),
    # each of the three sets its own k-means run of the backbone's features (session 20), as
    # v2's three clusterings of the bank
    "v2b-bankbackbone-3kmeans-2ep": (V2, 2, BANK_BACKBONE),
    # and v1's PCA (128) or v1's k (100)
    "v2b-bankbackbone-3kmeans-pca128-2ep": (V2, 2, {**BANK_BACKBONE, "pca_dim": 128}),
    "v2b-bankbackbone-3kmeans-k100-2ep": (V2, 2, {**BANK_BACKBONE, "k": 100}),
    "v2b-sets1": (V2, 3, {"first_targets": "backbone", "prototype_sets": 1}),
    "v2b-small16": (V2, 3, {"first_targets": "backbone", "small_crop_size": 16}),
    "v2b-wd1e-4": (V2, 3, {"first_targets": "backbone", "weight_decay": 1e-4}),
    # one large crop instead of two: about 0.6 of the epoch's cost, so 5 epochs take about 3's time
    "v2b-large1-5ep": (V2, 5, {"first_targets": "backbone", "large_crops": 1}),
    "v2b-wide": (V2, 3, {"first_targets": "backbone", "arch": "small-cnn-wide"}),
    # the two levers that raised the MNIST transfer most, together
    "v2b-wide-t0.2": (V2, 3, {"first_targets": "backbone", "arch": "small-cnn-wide",
                              "temperature": 0.2}),
}


def run_row(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out) / f"{name}-seed{seed}"
    result_file = out / "row.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    preset, epochs, changes = ROWS[name]
    config = get_preset(preset).override(epochs=max(epochs, 1), seed=seed, threads=args.threads,
                                         knn_every=0, out=str(out / "pretrain"),
                                         **{**BASE[preset], **changes})
    if args.threads:
        torch.set_num_threads(args.threads)
    if epochs == 0:
        torch.manual_seed(seed)  # the initialisation every run of this seed starts from
        backbone, stats = build_backbone(config.arch, config.sobel).eval(), {}
    else:
        checkpoint = out / "pretrain" / "checkpoints" / "last.ckpt"
        if not checkpoint.exists() or load_checkpoint(checkpoint)["epoch"] < epochs:
            pretrain(config, progress=False)
        backbone, _ = backbone_from_checkpoint(checkpoint)
        stats = run_stats(out / "pretrain" / "metrics.csv")
    row = {"row": name, "seed": seed, "preset": preset, "changes": changes, "epochs": epochs,
           **evaluate(backbone, config.image_size, args.transfer), **stats}
    save_json(row, result_file)
    return row


def evaluate(backbone: torch.nn.Module, image_size: int, transfer: bool) -> dict[str, float]:
    train = network_features(backbone, image_size, "fashion-mnist", "train")
    test = network_features(backbone, image_size, "fashion-mnist", "test")
    scores = {"knn_top1": knn_top1(*train, *test), "linear_top1": avgpool_probe_top1(train, test)}
    if transfer:
        scores["mnist_knn_top1"] = knn_top1(*network_features(backbone, image_size, "mnist", "train"),
                                            *network_features(backbone, image_size, "mnist", "test"))
    return scores


def run_stats(metrics_csv: Path) -> dict[str, float]:
    """NMI of the first and last clustering with the labels, NMI of the last with the one before,
    and the seconds of pretraining (every phase but the online k-NN) from a run's metrics.csv."""
    with open(metrics_csv) as handle:
        rows = list(csv.DictReader(handle))
    seconds = sum(float(r[key]) for r in rows for key in ("train_s", "extract_s", "cluster_s")
                  if r.get(key) not in (None, "", "nan"))
    return {"nmi_first": float(rows[0]["nmi_labels"]), "nmi_labels": float(rows[-1]["nmi_labels"]),
            "nmi_previous": float(rows[-1]["nmi_previous"]), "pretrain_s": seconds}


COLUMNS = {"knn_top1": ("k-NN top-1", 2), "linear_top1": ("linear top-1", 2),
           "mnist_knn_top1": ("MNIST k-NN", 2), "nmi_first": ("NMI first", 3),
           "nmi_labels": ("NMI last", 3), "nmi_previous": ("NMI prev", 3),
           "pretrain_s": ("pretrain s", 0)}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of every measured column, for every row name."""
    summary = []
    for name, (preset, epochs, changes) in ROWS.items():
        of_row = [r for r in runs if r["row"] == name]
        if not of_row:
            continue
        entry = {"row": name, "preset": preset, "epochs": epochs, "changes": changes,
                 "seeds": [r["seed"] for r in of_row]}
        for key in COLUMNS:
            values = [r[key] for r in of_row if key in r]
            if values:
                entry[key] = statistics.mean(values)
                entry[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def cell(entry: dict[str, Any], key: str, digits: int) -> str:
    if key not in entry or math.isnan(entry[key]):
        return "-"
    text = f"{entry[key]:.{digits}f}"
    return text + (f" ± {entry[key + '_std']:.{digits}f}" if len(entry["seeds"]) > 1 else "")


def print_table(summary: list[dict[str, Any]], markdown: bool) -> None:
    headers = ["row", "preset", "epochs", "change", "seeds"] + [t for t, _ in COLUMNS.values()]
    lines = [[e["row"], e["preset"], str(e["epochs"]),
              json.dumps(e["changes"]) if e["changes"] else "-", str(len(e["seeds"]))] +
             [cell(e, key, digits) for key, (_, digits) in COLUMNS.items()] for e in summary]
    if markdown:
        print("| " + " | ".join(headers) + " |")
        print("|" + "---|" * len(headers))
        for line in lines:
            print("| " + " | ".join(c.replace("|", "/") for c in line) + " |")
        return
    table = Table(title="Feature-quality study on Fashion-MNIST (issue 15)")
    for header in headers:
        table.add_column(header, justify="left" if header in ("row", "preset", "change") else "right")
    for line in lines:
        table.add_row(*line)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--transfer", action="store_true", help="also the k-NN top-1 on MNIST")
    parser.add_argument("--out", default="runs/study")
    parser.add_argument("--json", default=None,
                        help="where the summary goes (default: OUT/study.json; "
                             "bench/results/ gets only what a run is told to write there)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: the table of the runs already finished in --out")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    for seed in ([] if args.table_only else (int(s) for s in args.seeds.split(","))):
        for name in names:
            print(json.dumps(run_row(name, seed, args)), flush=True)
    finished = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("*/row.json"))]
    summary = summarise(finished)
    save_json({"rows": summary, "runs": finished}, args.json or Path(args.out) / "study.json")
    print_table(summary, args.markdown)


if __name__ == "__main__":
    main()
