"""The GPU bench script runs end to end at toy sizes on the CPU, and skips cleanly without CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def test_gpu_bench_runs_every_part_on_the_cpu_at_toy_sizes(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["device"].startswith("CPU") and results["tiny"]
    for part in ("model_eager", "loop_eager"):
        assert results[part]["train_images_per_s"] > 0
        assert results[part]["extract_images_per_s"] > 0
    assert results["jpeg"]["device_images_per_s"] > 0
    assert results["kmeans"]["seconds_per_iteration"] > 0
    assert "k-means iteration" in done.stdout  # the table


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: nothing to skip")
def test_gpu_bench_without_a_gpu_says_so_and_exits_cleanly(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "no CUDA device" in done.stdout
    assert json.loads(out.read_text()) == {"skipped": "no CUDA device: nothing measured"}


def test_study_summary_goes_to_its_own_out_not_the_committed_results(tmp_path):
    # A study run with its own --out once overwrote bench/results/study.json (26 rows) with its
    # one row: the summary's default place is now the run's folder.
    script = Path(__file__).resolve().parents[1] / "bench" / "study.py"
    committed = script.parent / "results" / "study.json"
    before = committed.read_bytes()
    row = tmp_path / "random-init-seed0"
    row.mkdir()
    (row / "row.json").write_text(json.dumps(
        {"row": "random-init", "seed": 0, "preset": "fashion-mnist", "changes": {}, "epochs": 0,
         "knn_top1": 84.8, "linear_top1": 83.98, "mnist_knn_top1": 96.13}))
    done = subprocess.run([sys.executable, str(script), "--table-only", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert committed.read_bytes() == before
    summary = json.loads((tmp_path / "study.json").read_text())
    assert [r["row"] for r in summary["rows"]] == ["random-init"]
    assert summary["rows"][0]["knn_top1"] == 84.8
