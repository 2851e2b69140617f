"""Ablation study of DeepCluster on Fashion-MNIST: which levers move the features.

Every row is the default preset with one change, pretrained with the project's own ``pretrain``
for ``--epochs`` epochs (all 60k training images unless ``--subset``), then judged on the full
Fashion-MNIST split with the backbone's global (AvgPool) feature: weighted k-NN top-1 (k = 20,
cosine, T = 0.07; 60k train images as memory, 10k test), the linear probe top-1 (the
``fashion-mnist-mhead`` recipe's AvgPool head, trained on the same features), NMI of the last
clustering with the labels, and the pretraining wall time. Runs already finished in ``--out`` are
reused, so an interrupted study resumes where it stopped. Prints a table and writes JSON.

    python bench/ablation.py                              # every row, seed 0
    python bench/ablation.py --rows base,strong --seeds 0,1,2
    python bench/ablation.py --table-only --markdown      # the table as in docs/ablation.md
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from rich.console import Console
from rich.table import Table

from deepcluster.benchmarks.knn import knn_top1, network_features
from deepcluster.benchmarks.linear import LinearProbe, build_optimizer, evaluate, train_epoch
from deepcluster.benchmarks.linear_config import get_preset as linear_preset
from deepcluster.benchmarks.linear_features import cached_batches
from deepcluster.checkpoint import backbone_from_checkpoint, load_checkpoint, save_json
from deepcluster.presets import DEFAULT_PRESET, get_preset
from deepcluster.models import build_backbone
from deepcluster.engine import pretrain

# The study's base: the default preset as it was before this study (the default now uses the
# "strong" augmentation this study chose).
STUDY_BASE = {"augmentation": "small"}

# name -> what changes against the base ("preset": start from another preset instead)
ROWS: dict[str, dict[str, Any]] = {
    "random-init": {},  # no training: the base network as initialised
    "base": {},
    "no-sobel": {"sobel": False},
    "k30": {"k": 30},
    "k300": {"k": 300},
    "k1000": {"k": 1000},
    "pca16": {"pca_dim": 16},
    "pca256": {"pca_dim": 256},
    "aug-none": {"augmentation": "none"},
    "aug-strong": {"augmentation": "strong"},
    "lr0.05": {"lr": 0.05},
    "lr0.2": {"lr": 0.2},
    "cosine": {"lr_schedule": "cosine"},
    "no-head-reset": {"reset_head": False},
    "subset-20k": {"subset": 20000},
    "2x-epochs": {"epochs_factor": 2},
    "resnet18-small": {"arch": "resnet18-small"},
    # DeepCluster-v2 (its own preset: multi-crop, prototypes, cosine schedule)
    "v2": {"preset": "fashion-mnist-v2"},
}


def run_row(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out) / f"{name}-seed{seed}"
    result_file = out / "row.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    changes = dict(ROWS[name])
    preset = changes.pop("preset", DEFAULT_PRESET)
    epochs = args.epochs * changes.pop("epochs_factor", 1)
    base = STUDY_BASE if preset == DEFAULT_PRESET else {}
    config = get_preset(preset).override(subset=args.subset, epochs=epochs, seed=seed,
                                         threads=args.threads, out=str(out / "pretrain"), **base)
    config = config.override(**changes)
    checkpoint = out / "pretrain" / "checkpoints" / "last.ckpt"
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if name == "random-init":
        torch.manual_seed(seed)  # the initialisation every run of this seed starts from
        backbone, nmi_labels = build_backbone(config.arch, config.sobel).eval(), float("nan")
    else:
        if not checkpoint.exists() or load_checkpoint(checkpoint)["epoch"] < config.epochs:
            pretrain(config, progress=False)
        backbone, _ = backbone_from_checkpoint(checkpoint)
        nmi = nmi_by_epoch(out / "pretrain" / "metrics.csv")
        nmi_labels = nmi[max(nmi)]
    seconds = time.perf_counter() - start

    knn, linear = evaluate_backbone(backbone, config.image_size)
    row = {
        "row": name, "seed": seed, "changes": ROWS[name], "subset": config.subset,
        "epochs": 0 if name == "random-init" else config.epochs,
        "knn_top1": knn,
        "linear_top1": linear,
        "nmi_labels": nmi_labels,
        "pretrain_s": seconds,
    }
    save_json(row, result_file)
    return row


def evaluate_backbone(backbone, image_size: int) -> tuple[float, float]:
    """(k-NN top-1, AvgPool linear probe top-1) on Fashion-MNIST test, from the global feature."""
    train = network_features(backbone, image_size, "fashion-mnist", "train")
    test = network_features(backbone, image_size, "fashion-mnist", "test")
    return knn_top1(*train, *test), avgpool_probe_top1(train, test)


def nmi_by_epoch(metrics_csv: Path) -> dict[int, float]:
    """NMI with the labels of each epoch's clustering, from a run's metrics log."""
    with open(metrics_csv) as handle:
        return {int(r["epoch"]): float(r["nmi_labels"]) for r in csv.DictReader(handle)
                if r.get("nmi_labels")}


def avgpool_probe_top1(train: tuple, test: tuple) -> float:
    """``benchmark linear``'s small-image AvgPool head (BatchNorm + Linear, its SGD recipe and
    float16 feature cache) trained on already extracted global features."""
    config = linear_preset("fashion-mnist-mhead").override(heads="avgpool")
    fabric = Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(config.seed)
    probe = LinearProbe({"avgpool": train[0].shape[1]}, 10, config.avgpool_bn)
    optimizer = build_optimizer(probe, config)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones),
                                                     config.gamma)
    probe, optimizer = fabric.setup(probe, optimizer)
    (train_x, train_y), (test_x, test_y) = [
        ({"avgpool": torch.from_numpy(x).to(torch.float16)}, torch.from_numpy(y))
        for x, y in (train, test)]
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(config.epochs):
        train_epoch(fabric, probe, optimizer,
                    cached_batches(train_x, train_y, config.batch_size, generator))
        scheduler.step()
    return evaluate(probe, cached_batches(test_x, test_y, config.eval_batch_size))["avgpool"]["top1"]


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread over seeds for every row name, in ROWS order."""
    summary = []
    for name in ROWS:
        runs = [r for r in rows if r["row"] == name]
        if not runs:
            continue
        entry = {"row": name, "changes": runs[0]["changes"], "seeds": [r["seed"] for r in runs],
                 "epochs": runs[0]["epochs"], "subset": runs[0]["subset"]}
        for key in ("knn_top1", "linear_top1", "nmi_labels", "pretrain_s"):
            values = [r[key] for r in runs]
            entry[key] = statistics.mean(values)
            entry[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def _cell(entry: dict[str, Any], key: str, digits: int) -> str:
    if entry[key] != entry[key]:  # nan: not measured (random init has no clustering)
        return "-"
    text = f"{entry[key]:.{digits}f}"
    return text + (f" ± {entry[key + '_std']:.{digits}f}" if len(entry["seeds"]) > 1 else "")


def print_table(summary: list[dict[str, Any]], markdown: bool) -> None:
    headers = ["row", "change", "seeds", "k-NN top-1", "linear top-1", "NMI labels", "pretrain s"]
    lines = [[e["row"], json.dumps(e["changes"]) if e["changes"] else "-", str(len(e["seeds"])),
              _cell(e, "knn_top1", 2), _cell(e, "linear_top1", 2), _cell(e, "nmi_labels", 3),
              _cell(e, "pretrain_s", 0)] for e in summary]
    if markdown:
        print("| " + " | ".join(headers) + " |")
        print("|" + "---|" * len(headers))
        for line in lines:
            print("| " + " | ".join(cell.replace("|", "/") for cell in line) + " |")
        return
    table = Table(title="DeepCluster ablation on Fashion-MNIST")
    for header in headers:
        table.add_column(header, justify="left" if header in ("row", "change") else "right")
    for line in lines:
        table.add_row(*line)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--subset", type=int, default=0, help="training images per run (0: all)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (2x-epochs doubles)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--json", default="bench/results/ablation.json")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: the table of the runs already finished in --out")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    rows = []
    for seed in ([] if args.table_only else (int(s) for s in args.seeds.split(","))):
        for name in names:
            rows.append(run_row(name, seed, args))
            print(json.dumps(rows[-1]), flush=True)
    # Every finished run in --out counts, so the table grows as more seeds are added.
    finished = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("*/row.json"))]
    summary = summarise(finished)
    save_json({"subset": args.subset, "epochs": args.epochs, "rows": summary, "runs": finished},
              args.json)
    print_table(summary, args.markdown)


if __name__ == "__main__":
    main()
