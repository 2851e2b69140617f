"""Would ``make demo`` finish sooner with its two pretraining runs side by side?

Runs the demo's two presets (v1 ``fashion-mnist`` and v2 ``fashion-mnist-v2``, a few epochs each)
three ways through the command line, on this machine with nothing else running:

1. v1 alone with every core's thread, then v2 the same: the demo's order today;
2. v1 alone on one thread (how well one run uses the second core);
3. v1 and v2 at the same time, one thread each.

Side by side can only win what one run fails to get from the second core: with a speed-up ``s``
from 1 to 2 threads, the pair side by side takes at best ``s / 2`` of the pair in a row. Written
for the 2-core machines the demo's ten minutes are set on: on more cores the pair would still run
one thread each. Prints a table and writes JSON.

    python bench/side_by_side.py                      # v1 2 epochs, v2 1 epoch
    python bench/side_by_side.py --json bench/results/side-by-side-zen4.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from budget import machine  # bench/budget.py, beside this script
from deepcluster.checkpoint import save_json
from deepcluster.presets import DEFAULT_PRESET, DEFAULT_V2_PRESET, get_preset

CLI = [sys.executable, "-m", "deepcluster.cli"]


def pretrain_command(method: str, epochs: int, threads: int, out: Path) -> list[str]:
    """The demo's pretraining of ``method`` (v1 or v2) for ``epochs``, online k-NN off."""
    preset = DEFAULT_PRESET if method == "v1" else DEFAULT_V2_PRESET
    return [*CLI, "pretrain", "--preset", preset, "--epochs", str(epochs), "--knn-every", "0",
            "--threads", str(threads), "--out", str(out)]


def timed(runs: list[tuple[list[str], Path]]) -> float:
    """Wall seconds for the ``(command, log file)`` runs started together, until the last one
    ends; each run's output goes to its log file (a pipe left unread could stall it)."""
    start = time.perf_counter()
    started = []
    for command, log in runs:
        with log.open("w") as output:
            started.append((command, log, subprocess.Popen(command, stdout=output, stderr=output)))
    for command, log, process in started:
        if process.wait():
            raise SystemExit(f"{' '.join(command)} failed:\n{log.read_text()[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--v1-epochs", type=int, default=2)
    parser.add_argument("--v2-epochs", type=int, default=1)
    parser.add_argument("--json", default="runs/side_by_side.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as folder:
        def run(method: str, threads: int, name: str) -> tuple[list[str], Path]:
            epochs = args.v1_epochs if method == "v1" else args.v2_epochs
            out = Path(folder) / name
            return pretrain_command(method, epochs, threads, out), out.with_suffix(".log")

        seconds = {"v1, all threads": timed([run("v1", cores, "v1")]),
                   "v2, all threads": timed([run("v2", cores, "v2")]),
                   "v1, one thread": timed([run("v1", 1, "v1-one")]),
                   "v1 and v2 side by side, one thread each": timed(
                       [run("v1", 1, "v1-side"), run("v2", 1, "v2-side")])}
    in_a_row = seconds["v1, all threads"] + seconds["v2, all threads"]
    side_by_side = seconds["v1 and v2 side by side, one thread each"]
    results = {"command": "python bench/side_by_side.py " + " ".join(sys.argv[1:]),
               "machine": machine(get_preset(DEFAULT_PRESET).override(threads=cores)),
               "cores": cores,
               "v1_epochs": args.v1_epochs, "v2_epochs": args.v2_epochs,
               "seconds": {name: round(value, 1) for name, value in seconds.items()},
               "v1_speedup_all_threads": round(
                   seconds["v1, one thread"] / seconds["v1, all threads"], 2),
               "side_by_side_over_in_a_row": round(side_by_side / in_a_row, 3)}
    table = Table(title=f"the demo's two runs, {cores} cores")
    table.add_column("run")
    table.add_column("wall s", justify="right")
    for name, value in seconds.items():
        table.add_row(name, f"{value:.1f}")
    table.add_row("v1 then v2, all threads (the demo today)", f"{in_a_row:.1f}")
    Console().print(table)
    Console().print(f"v1's speed-up from 1 to {cores} threads: "
                    f"{results['v1_speedup_all_threads']}; "
                    f"side by side / in a row: {results['side_by_side_over_in_a_row']}")
    save_json(results, Path(args.json))


if __name__ == "__main__":
    main()
