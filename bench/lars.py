"""DeepCluster v1 and v2 with LARS, the v2 references' optimiser, instead of SGD (issue 15).

SwAV's ``main_deepclusterv2.py`` wraps SGD in apex's LARC (trust coefficient 0.001, no clipping,
on every parameter) at lr 4.8 for batches of 4096; the project trains with plain SGD. This
script runs a preset as a row of ``bench/study.py`` (v2: 3 epochs, as ``make demo``; v1: 6)
with timm's ``Lars`` set up as that LARC (the same trust ratio, weight decay folded into the
gradient before it) standing in for SGD during pretraining only (the probes keep their own
optimiser), at SwAV's lr scaled linearly to the presets' batch of 256 (0.3) or the lrs given,
and judges it as the study does. timm is not a dependency of the project: install it into the
environment that runs this script (``pip install --no-deps --target DIR timm`` and
``PYTHONPATH=DIR`` will do).

    python bench/lars.py --seeds 0 --transfer --out runs/lars
    python bench/lars.py --method deepcluster --lrs 0.6,1.2 --seeds 0 --transfer --out runs/lars
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Iterator

import torch
from timm.optim.lars import Lars

import study  # bench/study.py, beside this script
from deepcluster.checkpoint import save_json

LR = 4.8 * 256 / 4096  # SwAV's base lr at batch 4096, scaled linearly to the preset's 256
TRUST = 0.001
# method -> (row name, preset, epochs, the fields of today's preset that the study's BASE resets)
RUNS = {"deepcluster-v2": ("v2b-k300", study.V2, 3, {"first_targets": "backbone", "k": 300}),
        "deepcluster": ("v1-preset", study.V1, 6, study.V1_HIDDEN)}


@contextlib.contextmanager
def sgd_replaced_by_lars() -> Iterator[None]:
    """Every ``torch.optim.SGD`` built inside the block is a LARS optimiser with its arguments."""
    sgd = torch.optim.SGD

    def lars(params, lr, momentum, weight_decay):
        return Lars(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    trust_coeff=TRUST, trust_clip=False, always_adapt=True)

    torch.optim.SGD = lars
    try:
        yield
    finally:
        torch.optim.SGD = sgd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=RUNS, default="deepcluster-v2")
    parser.add_argument("--lrs", default=str(LR), help="comma-separated lrs of LARS")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--transfer", action="store_true")
    parser.add_argument("--out", default="runs/lars")
    parser.add_argument("--json", default="bench/results/lars.json")
    args = parser.parse_args()
    args.threads = 0
    plain_pretrain = study.pretrain

    def pretrain_with_lars(config, progress):  # the probes after it keep their own optimisers
        with sgd_replaced_by_lars():
            return plain_pretrain(config, progress=progress)

    study.pretrain = pretrain_with_lars
    prefix, preset, epochs, fields = RUNS[args.method]
    rows = []
    for lr in [float(value) for value in args.lrs.split(",")]:
        name = f"{prefix}-lars" + ("" if lr == LR else f"-lr{lr:g}")
        study.ROWS[name] = (preset, epochs, {**fields, "lr": lr})
        for seed in [int(value) for value in args.seeds.split(",")]:
            row = study.run_row(name, seed, args)
            rows.append({**row, "optimiser": {"name": "timm Lars", "lr": lr, "trust_coeff": TRUST,
                                              "trust_clip": False, "always_adapt": True}})
            print(rows[-1], flush=True)
    save_json({"command": f"python bench/lars.py --method {args.method} --lrs {args.lrs} "
                          f"--seeds {args.seeds}"
                          + (" --transfer" if args.transfer else ""),
               "rows": rows}, args.json)


if __name__ == "__main__":
    main()
