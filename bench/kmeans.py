"""k-means backends side by side: this project's faiss and torch backends against scikit-learn.

Same data (L2-normalised points drawn around k hidden centres, d = 256), the same k initial
centroids (k distinct points drawn with the seed), the same number of Lloyd's iterations, one
after the other in one process. Prints a table (seconds, final inertia) and writes JSON.

    python bench/kmeans.py                         # N = 20k, 100k; k = 100, 1000
    python bench/kmeans.py --sizes 20000,100000,200000 --ks 100,1000,10000   # the full grid
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.cluster import KMeans

from deepcluster.clustering import initial_centroids, kmeans


def make_points(n: int, d: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centres, d)).astype(np.float32)
    points = means[rng.integers(0, centres, n)] + 0.5 * rng.standard_normal((n, d), np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def inertia_of(points: np.ndarray, centroids: np.ndarray) -> float:
    x, c = torch.from_numpy(points), torch.from_numpy(np.asarray(centroids, np.float32))
    return float(torch.cdist(x, c).min(dim=1).values.pow(2).sum())


def run_sklearn(points: np.ndarray, init: np.ndarray, iterations: int, seed: int
                ) -> tuple[np.ndarray, int]:
    # The same initial centroids and iteration count as the other two (no k-means++). With
    # tol=0 it still stops early once no assignment changes.
    model = KMeans(len(init), init=init, n_init=1, max_iter=iterations, tol=0.0,
                   random_state=seed, algorithm="lloyd")
    model.fit(points)
    return model.cluster_centers_, int(model.n_iter_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--ks", default="100,1000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--backends", default="faiss,torch,sklearn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/kmeans.json")
    args = parser.parse_args()

    rows = []
    for n in map(int, args.sizes.split(",")):
        for k in map(int, args.ks.split(",")):
            if k > n:
                continue
            points = make_points(n, args.dim, k, args.seed)
            init = initial_centroids(torch.from_numpy(points), k, args.seed).numpy()
            for backend in args.backends.split(","):
                start, ran = time.perf_counter(), args.iterations
                if backend == "sklearn":
                    centroids, ran = run_sklearn(points, init, args.iterations, args.seed)
                else:
                    _, centroids, _ = kmeans(points, k, args.iterations, args.seed, backend,
                                             init=init)
                seconds = time.perf_counter() - start
                rows.append({"n": n, "k": k, "d": args.dim, "backend": backend,
                             "iterations": ran, "seconds": seconds,
                             "inertia": inertia_of(points, centroids)})
                print(json.dumps(rows[-1]), flush=True)

    table = Table(title=f"k-means, {args.iterations} iterations, d = {args.dim}")
    for column in ("N", "k", "backend", "iterations", "seconds", "inertia", "vs faiss (time)"):
        table.add_column(column, justify="right")
    for row in rows:
        faiss_row = next((r for r in rows if r["n"] == row["n"] and r["k"] == row["k"]
                          and r["backend"] == "faiss"), None)
        ratio = f"{row['seconds'] / faiss_row['seconds']:.2f}x" if faiss_row else "-"
        table.add_row(str(row["n"]), str(row["k"]), row["backend"], str(row["iterations"]),
                      f"{row['seconds']:.2f}",
                      f"{row['inertia']:.1f}", ratio)
    Console().print(table)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "iterations": args.iterations,
                                          "rows": rows}, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
