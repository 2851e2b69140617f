"""Peak memory of the clustering step (extraction + PCA + k-means) against N: the streaming PCA
with spilled features (the default) against the plain "stack all features, then PCA" approach.

Each (mode, N) runs in its own process; peak RSS is measured above the process's RSS once the
images and the network are loaded. The network is a fixed random projection of the pixels to
D = 2048 (ResNet-50's width) so that the measurement is about the clustering step, not the
model. Prints a table and writes JSON.

    python bench/cluster_memory.py                       # N = 30k, 60k, 120k
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


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, n: int) -> dict:
    import warnings

    from deepcluster.clustering import cluster_features, cluster_whitened
    from deepcluster.data import ArrayImageDataset, load_dataset
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

    def step(data):
        if mode == "streaming":
            whitened = extract_whitened(network, data, PCA_DIM, batch_size=512, progress=False,
                                        batch_transform=pipeline.batch)
            return cluster_whitened(whitened, K, seed=0, copy=False)
        features, _ = extract_global(network, data, 512, progress=False,
                                     batch_transform=pipeline.batch)
        return cluster_features(features, K, PCA_DIM, seed=0)

    step(dataset.subset(1024))  # warm up: libraries, thread pools, allocator
    before = rss_mb()
    start = time.perf_counter()
    result = step(dataset)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "n": n, "seconds": time.perf_counter() - start,
            "peak_above_start_mb": peak - before, "reduced_mb": n * PCA_DIM * 4 / 2**20,
            "full_mb": n * WIDTH * 4 / 2**20, "empty_clusters": result.num_empty}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="30000,60000,120000")
    parser.add_argument("--out", default="bench/results/cluster_memory.json")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return

    rows = []
    for n in map(int, args.sizes.split(",")):
        for mode in ("streaming", "plain"):
            done = subprocess.run([sys.executable, __file__, "--child", mode, str(n)],
                                  check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)

    table = Table(title=f"clustering step peak memory (D = {WIDTH} -> PCA {PCA_DIM}, k = {K})")
    for column in ("N", "mode", "peak MB", "N x 256 x 4 MB", "peak / (N x 256 x 4)",
                   "N x 2048 x 4 MB", "seconds"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["n"]), row["mode"], f"{row['peak_above_start_mb']:.0f}",
                      f"{row['reduced_mb']:.0f}",
                      f"{row['peak_above_start_mb'] / row['reduced_mb']:.2f}",
                      f"{row['full_mb']:.0f}", f"{row['seconds']:.1f}")
    Console().print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cores": os.cpu_count(), "rows": rows}, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
