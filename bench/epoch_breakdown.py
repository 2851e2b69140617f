"""Epoch overhead: a real pretraining epoch against the pure model work it contains.

Runs ``deepcluster pretrain`` (default preset unless told otherwise) for one epoch on a subset,
then times, on the same machine in the same process, the pure training step (forward, backward,
SGD on batches already in memory, augmentation excluded) and the pure extraction forward pass
for the same number of images. Overhead ratio = loop time / (pure train + pure extraction);
the scaling issue's target is at most 1.15. Prints a table and writes JSON.

    python bench/epoch_breakdown.py                      # default preset, 20k images
    python bench/epoch_breakdown.py --preset mmselfsup-peer --subset 2000
    python bench/epoch_breakdown.py --before dc0df94     # also that commit's loop, in one run
    python bench/epoch_breakdown.py --compile            # also the pure work with the backbone
                                                         # compiled (torch.compile), side by side

``--before REV`` checks REV out in a temporary git worktree and runs its own copy of this script
on its own code first (a subprocess), so that the two loops are measured side by side on the same
machine state.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from budget import machine  # bench/budget.py, beside this script
from deepcluster.presets import get_preset
from deepcluster.models import DeepClusterModel, build_backbone
from deepcluster.engine import pretrain
from deepcluster.precision import autocast


def pure_rates(config, images: int, compiled: bool = False) -> dict[str, float]:
    """Seconds for the pure train steps and extraction passes over ``images`` images
    (``compiled``: the backbone compiled, as ``--compile`` does; the warm-up steps compile it)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    model = DeepClusterModel(build_backbone(config.arch, config.sobel), config.k,
                             hidden=config.head_hidden, layers=config.head_layers)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    if compiled:
        model.backbone.compile()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    size = config.image_size

    def batch(count: int) -> torch.Tensor:
        return torch.randn(count, 3, size, size).contiguous(memory_format=layout)

    x, y = batch(config.batch_size), torch.randint(0, config.k, (config.batch_size,))
    model.train()
    steps = -(-images // config.batch_size)
    for step in range(-2, steps):  # two warm-up steps, then the timed ones
        if step == 0:
            start = time.perf_counter()
        with autocast(config.precision, "cpu"):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    train = time.perf_counter() - start

    model.eval()
    xe = batch(config.extract_batch_size)
    passes = -(-images // config.extract_batch_size)
    with torch.inference_mode(), autocast(config.precision, "cpu"):
        model.backbone(xe)
        start = time.perf_counter()
        for _ in range(passes):
            model.backbone(xe)
    return {"train_s": train, "extract_s": time.perf_counter() - start}


# Runs an older tree's copy of this script on its own code. The editable install puts this
# checkout's src/ on the path: the older tree's src/ replaces it (older trees had no __init__.py:
# a namespace package would merge both). A given precision is set on the older tree's presets
# (its script has no --precision).
BOOTSTRAP = """
import dataclasses, importlib, runpy, sys
tree_src, this_src, precision = sys.argv[1:4]
sys.path[:] = [tree_src] + [p for p in sys.path if p != this_src]
sys.argv = sys.argv[4:]
if precision:
    for name in ("deepcluster.presets", "deepcluster.config"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "PRESETS"):
            for key, preset in module.PRESETS.items():
                module.PRESETS[key] = dataclasses.replace(preset, precision=precision)
            break
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def measure_before(rev: str, preset: str, subset: int, precision: str | None) -> dict:
    """This script's measurement at git revision ``rev`` (its own code, in a worktree)."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tree, out = Path(tmp) / "tree", Path(tmp) / "before.json"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), rev],
                       check=True, capture_output=True)
        try:
            script = tree / "bench" / "epoch_breakdown.py"
            subprocess.run([sys.executable, "-c", BOOTSTRAP, str(tree / "src"), str(root / "src"),
                            precision or "", str(script), "--preset", preset, "--subset",
                            str(subset), "--out", str(out)],
                           check=True, cwd=tree, stdout=subprocess.DEVNULL)
            return json.loads(out.read_text())
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)],
                           check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fashion-mnist")
    parser.add_argument("--subset", type=int, default=20000)
    parser.add_argument("--before", help="also measure this git revision's loop, first")
    parser.add_argument("--precision", help="override the preset's precision (32-true on a CPU "
                        "without BF16 instructions, where bf16-mixed is several times slower)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the pure work with the backbone compiled")
    parser.add_argument("--out", default="bench/results/epoch_breakdown.json")
    args = parser.parse_args()

    before = (measure_before(args.before, args.preset, args.subset, args.precision)
              if args.before else None)
    with tempfile.TemporaryDirectory() as tmp:
        config = get_preset(args.preset).override(subset=args.subset, epochs=1, out=tmp,
                                                  precision=args.precision)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = pretrain(config, progress=False).history
    epoch = history[-1]  # training pass of epoch 1 and the clustering after it
    loop = {"train_s": epoch["train_s"], "extract_s": epoch["extract_s"],
            "cluster_s": epoch["cluster_s"]}
    loop["total_s"] = sum(loop.values())
    pure = pure_rates(config, args.subset)
    pure["total_s"] = pure["train_s"] + pure["extract_s"]
    ratio = loop["total_s"] / pure["total_s"]
    compiled = None
    if args.compile:
        compiled = pure_rates(config, args.subset, compiled=True)
        compiled["total_s"] = compiled["train_s"] + compiled["extract_s"]

    table = Table(title=f"one epoch, {args.preset}, {args.subset} images")
    columns = ["part", "in the loop (s)", "pure model work (s)", "ratio"]
    columns += ["pure, compiled (s)"] if compiled else []
    for column in columns:
        table.add_column(column, justify="right")
    for part, name in (("train_s", "train"), ("extract_s", "extract"), ("total_s", "epoch")):
        cells = [name, f"{loop[part]:.1f}", f"{pure[part]:.1f}", f"{loop[part] / pure[part]:.2f}"]
        table.add_row(*cells, *([f"{compiled[part]:.1f}"] if compiled else []))
        if part == "extract_s":
            table.add_row("PCA + k-means", f"{loop['cluster_s']:.1f}", "-", "-",
                          *(["-"] if compiled else []))
    if before:
        b = before["loop"]
        table.add_row(f"epoch at {args.before}", f"{b['total_s']:.1f}",
                      f"{before['pure']['total_s']:.1f}", f"{before['overhead']:.2f}")
    Console().print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"preset": args.preset, "subset": args.subset, "machine": machine(config),
              "loop": loop, "pure": pure, "overhead": ratio}
    if before:
        result["before"] = {"rev": args.before, **before}
    if compiled:
        result["pure_compiled"] = compiled
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
