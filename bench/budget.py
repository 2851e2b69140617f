"""What a pretraining run reaches within fixed wall-clock budgets (15 and 60 minutes).

Pretrains one preset (with overrides), keeping the checkpoint of every epoch; the wall time at
which each epoch's checkpoint was written is measured from the start of the command. For every
budget the last epoch finished within it is judged as in ``bench/ablation.py``: k-NN top-1 and
the AvgPool linear probe top-1 on Fashion-MNIST test, NMI of its clustering with the labels,
and with ``--transfer`` the MNIST k-NN top-1 (``bench/study.py``'s). Prints a table and writes
JSON.

    python bench/budget.py --preset fashion-mnist --epochs 40 --out runs/budget/v1
    python bench/budget.py --preset fashion-mnist-v2 --epochs 12 --out runs/budget/v2
    python bench/budget.py ... --set augmentation=strong --set lr=0.2 --minutes 15,60
    python bench/budget.py ... --lars --set lr=0.6  # LARS for SGD (bench/lars.py; needs timm)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import signal
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

from ablation import nmi_by_epoch  # bench/ablation.py, beside this script
from study import evaluate  # bench/study.py, beside this script
from deepcluster.checkpoint import backbone_from_checkpoint, load_checkpoint, save_json
from deepcluster.config import PretrainConfig
from deepcluster.presets import get_preset
from deepcluster.engine import pretrain
from deepcluster.precision import cpu_has_bf16, resolve_precision


def parse_overrides(pairs: list[str]) -> dict:
    """``name=value`` pairs typed like the PretrainConfig fields they set."""
    types = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}
    changes = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in types:
            raise SystemExit(f"--set {pair}: no config field {name!r}")
        kind = types[name]
        changes[name] = (value.lower() in ("1", "true", "yes") if kind in ("bool", bool) else
                         {"int": int, "float": float, "str": str}[kind](value))
    return changes


def stop_after(seconds: float) -> None:
    """Interrupt the run as Ctrl-C would, ``seconds`` from now."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(int(seconds) + 1)


def budget_rows(times: dict[str, float], budgets: list[float],
                judge: Callable[[str], dict]) -> list[dict]:
    """One row per budget: the last checkpoint written within it (``times``: seconds from the
    start, by checkpoint name), judged by ``judge``. A checkpoint that several budgets pick (a run
    re-judged with ``--minutes 15,16`` whose last epoch ended past 15) is judged once."""
    judged: dict[str, dict] = {}
    rows = []
    for minutes in budgets:
        within = [name for name, seconds in times.items() if seconds <= minutes * 60]
        if not within:
            continue
        name = max(within)
        if name not in judged:
            judged[name] = judge(name)
        scores = dict(judged[name])
        rows.append({"budget_min": minutes, "epoch": scores.pop("epoch"),
                     "elapsed_s": times[name], **scores})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def machine(config: PretrainConfig) -> dict:
    """What the budget figures depend on: the CPU (its family and model tell a Zen 3 from a Zen 4,
    whose model names are both "AMD EPYC"), its bf16 arithmetic, the threads and the precision.
    It is the machine this command runs on: one that reuses an earlier ``epoch_times.json``
    only evaluates here."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    first_cpu = {}
    for line in cpuinfo.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        first_cpu[key.strip()] = value.strip()
    return {"cpu": first_cpu.get("model name", platform.processor()),
            "family": first_cpu.get("cpu family"), "model": first_cpu.get("model"),
            "cpus": cpuinfo.count("processor\t"), "bf16": cpu_has_bf16(), "threads": config.threads,
            "precision": resolve_precision(config.precision, config.accelerator),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fashion-mnist")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--epochs", type=int, required=True, help="enough to fill the largest budget")
    parser.add_argument("--minutes", default="15,60", help="comma-separated budgets")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--stop", action="store_true",
                        help="stop pretraining when the largest budget has passed (for a run "
                             "whose schedule does not depend on --epochs: a constant lr)")
    parser.add_argument("--transfer", action="store_true",
                        help="also the MNIST k-NN top-1 of each budget's checkpoint")
    parser.add_argument("--lars", action="store_true",
                        help="pretrain with bench/lars.py's LARS instead of SGD (needs timm)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    config = get_preset(args.preset).override(epochs=args.epochs, threads=args.threads,
                                              keep_every=1, out=str(out / "pretrain"),
                                              **parse_overrides(args.set))
    checkpoints = out / "pretrain" / "checkpoints"
    timing_file = out / "epoch_times.json"
    if not timing_file.exists():
        start = time.time()
        if args.stop:
            stop_after(max(float(m) for m in args.minutes.split(",")) * 60)
        optimiser = contextlib.nullcontext()
        if args.lars:
            from lars import sgd_replaced_by_lars  # bench/lars.py; timm is not a project dependency
            optimiser = sgd_replaced_by_lars()
        try:
            with optimiser:
                pretrain(config, progress=False)
        except KeyboardInterrupt:  # the stop: the epochs it finished keep their checkpoints
            print("stopped at the largest budget", flush=True)
        finally:
            signal.alarm(0)  # a run that ended before its stop must not be interrupted later
        save_json({p.name: p.stat().st_mtime - start for p in sorted(checkpoints.glob("epoch_*.ckpt"))},
                  timing_file)
    times = json.loads(timing_file.read_text())
    nmi = nmi_by_epoch(out / "pretrain" / "metrics.csv")
    budgets = [float(m) for m in args.minutes.split(",")]

    def judge(name: str) -> dict:
        epoch = load_checkpoint(checkpoints / name)["epoch"]
        backbone, saved = backbone_from_checkpoint(checkpoints / name)
        return {"epoch": epoch, **evaluate(backbone, saved.image_size, args.transfer),
                "nmi_labels": nmi.get(epoch)}

    rows = budget_rows(times, budgets, judge)
    save_json({"preset": args.preset, "machine": machine(config), "config": config.to_dict(),
               "optimiser": "LARS (bench/lars.py)" if args.lars else "SGD", "rows": rows},
              out / "budget.json")
    table = Table(title=f"{args.preset} {' '.join(args.set)} within fixed budgets")
    for column in ("budget min", "epoch", "elapsed s", "k-NN top-1", "linear top-1",
                   "MNIST k-NN", "NMI labels"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['budget_min']:g}", str(r["epoch"]), f"{r['elapsed_s']:.0f}",
                      f"{r['knn_top1']:.2f}", f"{r['linear_top1']:.2f}",
                      f"{r['mnist_knn_top1']:.2f}" if "mnist_knn_top1" in r else "-",
                      f"{r['nmi_labels']:.3f}" if r["nmi_labels"] is not None else "-")
    Console().print(table)


if __name__ == "__main__":
    main()
