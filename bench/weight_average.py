"""Does averaging the backbone's weights over the last epochs of a budget run lift its features?

v1's lr is constant, so each epoch's backbone is a noisy point of the same trajectory, and a
cosine schedule that would settle it costs 1.3 k-NN points (docs/study.md). Averaging the
weights of the last N epochs' checkpoints (stochastic weight averaging, Izmailov et al., 2018)
is the other way to settle it. It costs no training time: the checkpoints are those a
``bench/budget.py`` run kept within its budget. BatchNorm's running statistics do not average
exactly (they belong to each epoch's weights): ``--bn recalibrate`` re-estimates them on clean
training images (``bench/bn_recalibration.py``), ``--bn average`` averages them like the weights
(no extra pass). N = 1 with re-estimated statistics separates that step's effect. Each row is
judged as ``bench/budget.py`` judges its checkpoint. Prints a table and writes JSON.

    python bench/weight_average.py runs/budget/v1-zen5 --minutes 15 --last 1,4,8 \
        --bn recalibrate,average --json bench/results/weight-average-v1-zen5.json
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ablation import evaluate_backbone  # bench/ablation.py, beside this script
from bn_recalibration import recalibrate
from deepcluster.checkpoint import backbone_from_checkpoint, load_checkpoint, save_json


def checkpoints_within(run: Path, minutes: float) -> list[Path]:
    """The epoch checkpoints a budget run wrote within ``minutes``, oldest first."""
    times = json.loads((run / "epoch_times.json").read_text())
    names = sorted(name for name, seconds in times.items() if seconds <= minutes * 60)
    if not names:
        raise SystemExit(f"{run / 'epoch_times.json'}: no checkpoint within {minutes:g} minutes")
    return [run / "pretrain" / "checkpoints" / name for name in names]


@torch.no_grad()
def averaged_backbone(paths: list[Path], buffers: bool,
                      weights: list[float] | None = None) -> tuple[torch.nn.Module, object]:
    """The backbone of the last of ``paths`` with every parameter (and with ``buffers`` every
    floating-point buffer: BatchNorm's statistics) replaced by its mean over ``paths``, weighted
    by ``weights`` (summing to 1; None: uniform)."""
    weights = weights or [1 / len(paths)] * len(paths)
    backbone, config = backbone_from_checkpoint(paths[-1])
    params = dict(backbone.named_parameters())
    if buffers:
        params.update((n, b) for n, b in backbone.named_buffers() if b.is_floating_point())
    total = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
    for path, weight in zip(paths, weights):
        state = load_checkpoint(path)["backbone"]
        for name in total:
            total[name] += weight * state[name].to(torch.float64)
    for name, p in params.items():
        p.copy_(total[name])
    return backbone, config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a bench/budget.py --out folder")
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--last", default="1,4,8", help="comma-separated numbers of epochs")
    parser.add_argument("--decays", default="",
                        help="comma-separated: also an exponential average of every epoch's "
                             "weights with each decay (epoch t's weight (1-d) d^(T-t))")
    parser.add_argument("--bn", default="recalibrate",
                        help="comma-separated: recalibrate (40 batches of 500 clean images) and/or "
                             "average (BatchNorm's statistics averaged like the weights)")
    parser.add_argument("--batches", type=int, default=40, help="of 500 images, for BatchNorm")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    bn_modes = args.bn.split(",")
    if set(bn_modes) - {"recalibrate", "average"}:
        parser.error(f"--bn {args.bn}: each mode is recalibrate or average")
    warnings.filterwarnings("ignore")
    paths = checkpoints_within(Path(args.run), args.minutes)
    rows = []
    windows = [(f"last {n}", paths[-int(n):], None) for n in args.last.split(",") if n]
    for decay in (float(d) for d in args.decays.split(",") if d):
        ages = range(len(paths) - 1, -1, -1)  # the first epoch takes what the decay leaves
        weights = [(1 - decay) * decay ** age if age < len(paths) - 1 else decay ** age
                   for age in ages]
        windows.append((f"decay {decay:g}", paths, weights))
    for (average, chosen, weights), bn in ((w, bn) for w in windows for bn in bn_modes):
        backbone, config = averaged_backbone(chosen, bn == "average", weights)
        if bn == "recalibrate":
            recalibrate(backbone, config.image_size, args.batches)
        knn, linear = evaluate_backbone(backbone, config.image_size)
        epochs = [int(p.stem.removeprefix("epoch_")) for p in chosen]  # epoch_NNN.ckpt
        rows.append({"average": average, "epochs": f"{epochs[0]}-{epochs[-1]}", "bn": bn,
                     "knn_top1": knn, "linear_top1": linear})
        print(json.dumps(rows[-1]), flush=True)
    save_json({"run": args.run, "minutes": args.minutes, "bn_batches": args.batches,
               "rows": rows}, args.json)
    table = Table(title=f"{args.run}: weights averaged over the last epochs within "
                        f"{args.minutes:g} minutes")
    for column in ("average", "epochs", "BatchNorm", "k-NN top-1", "linear top-1"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["average"], r["epochs"], r["bn"], f"{r['knn_top1']:.2f}",
                      f"{r['linear_top1']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
