"""Peak memory and time of the clustering step (extraction + PCA + k-means) against N, for the
streaming PCA's ways of keeping the full-width features until the PCA is fitted: held in memory
(what the default budget chooses while N x D x 4 bytes fit it), spilled to disk in float16 (what
it chooses above), and spilled in float32 (the spill before float16, for reference); ``plain``
(the "stack all features, then scikit-learn's PCA" approach) can be added with ``--paths``.

Each (path, N) runs in its own process; peak RSS is measured above the process's RSS once the
images and the network are loaded. The network is a fixed random projection of the pixels to
D = 2048 (ResNet-50's width) so that the measurement is about the clustering step, not the
model. Prints a table and writes JSON. The CPU seconds (user + system, all threads) are there
for shared machines: they move less than the wall-clock seconds when other processes take the
cores, but they leave out the waits for the disk.

    python bench/cluster_memory.py                       # N = 30k, 60k, 120k
    python bench/cluster_memory.py --sizes 60000,240000 --threads 1  # one core of two
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

WIDTH, PCA_DIM, K = 2048, 256, 100
# path -> (its name in the table, extract_whitened's memory_budget and spill_dtype)
PATHS = {"memory": ("in memory", None, "float32"), "spill16": ("spill float16", 0, "float16"),
         "spill32": ("spill float32", 0, "float32"), "plain": ("plain (stacked)", None, None)}


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds() -> float:
    """User + system CPU time of this process: on shared cores it counts this process's work,
    where the wall-clock seconds also count the waits for the other processes."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(path: str, n: int) -> dict:
    import warnings

    from deepcluster.clustering import cluster_features, cluster_whitened
    from deepcluster.data import ArrayImageDataset
    from deepcluster.datasets import load_dataset
    from deepcluster.features import extract_global, extract_whitened
    from deepcluster.transforms import extraction_pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = load_dataset("fashion-mnist", "train")
    repeats = -(-n // len(images))
    pixels = np.concatenate([images.images] * repeats)[:n]
    dataset = ArrayImageDataset(pixels, None, [])
    pipeline = extraction_pipeline(28, in_memory=True)
    dataset = dataset.with_transform(pipeline.sample)
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, WIDTH), nn.ReLU())

    _, memory_budget, spill_dtype = PATHS[path]

    def step(data):
        if path != "plain":
            whitened = extract_whitened(network, data, PCA_DIM, batch_size=512, progress=False,
                                        batch_transform=pipeline.batch,
                                        memory_budget=memory_budget, spill_dtype=spill_dtype)
            return cluster_whitened(whitened, K, seed=0, copy=False)
        features, _ = extract_global(network, data, 512, progress=False,
                                     batch_transform=pipeline.batch)
        return cluster_features(features, K, PCA_DIM, seed=0)

    step(dataset.subset(1024))  # warm up: libraries, thread pools, allocator
    before, cpu_before = rss_mb(), cpu_seconds()
    start = time.perf_counter()
    result = step(dataset)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"path": path, "n": n, "threads": torch.get_num_threads(),
            "seconds": time.perf_counter() - start,
            "cpu_seconds": cpu_seconds() - cpu_before,
            "peak_above_start_mb": peak - before, "reduced_mb": n * PCA_DIM * 4 / 2**20,
            "full_mb": n * WIDTH * 4 / 2**20, "empty_clusters": result.num_empty}


def child_env(threads: int) -> dict[str, str]:
    """The environment of a run: with ``threads``, every thread pool (torch's, OpenBLAS's, MKL's,
    faiss's OpenMP) held to that many, e.g. 1 to measure on one core while the other is busy."""
    env = dict(os.environ)
    if threads:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    return env


def print_table(rows: list[dict]) -> None:
    table = Table(title=f"clustering step (D = {WIDTH} -> PCA {PCA_DIM}, k = {K})")
    for column in ("N", "path", "peak MB", "peak / (N x 256 x 4)", "seconds", "CPU seconds"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['n']:,}", PATHS[row["path"]][0], f"{row['peak_above_start_mb']:.0f}",
                      f"{row['peak_above_start_mb'] / row['reduced_mb']:.2f}",
                      f"{row['seconds']:.1f}", f"{row['cpu_seconds']:.1f}")
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="30000,60000,120000")
    parser.add_argument("--paths", default="memory,spill16,spill32",
                        help=f"comma-separated, from {', '.join(PATHS)}")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads of each run (torch, BLAS, OpenMP); 0: their defaults")
    parser.add_argument("--out", default="bench/results/cluster_memory.json")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    paths = args.paths.split(",")
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(PATHS)}")

    rows = []
    for n in map(int, args.sizes.split(",")):
        for path in paths:
            done = subprocess.run([sys.executable, __file__, "--child", path, str(n)],
                                  check=True, capture_output=True, text=True,
                                  env=child_env(args.threads))
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cores": os.cpu_count(), "threads": args.threads,
                                          "rows": rows}, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
