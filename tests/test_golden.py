"""The engine reproduces the golden runs recorded with the code before it (tests/golden/record.py):
per-epoch cluster ids, losses and the final backbone, bit for bit on the CPU."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster.api import train_supervised
from deepcluster.config import PretrainConfig
from deepcluster.engine import pretrain

HERE = Path(__file__).parent / "golden"
GOLDEN = json.loads((HERE / "runs.json").read_text())
RECORD = HERE / "record.py"


def weights_hash(state_dict):
    import importlib.util

    spec = importlib.util.spec_from_file_location("record", RECORD)
    record = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(record)
    return record.weights_hash(state_dict)


# The golden runs were recorded with the AVX2 kernels of torch, oneDNN, MKL and faiss. Newer CPUs'
# AVX-512 kernels round differently, so the runs are made in a subprocess held to AVX2: the same
# bits on every CI machine. (Only here: torch.compile's CPU code gives NaN under
# ATEN_CPU_CAPABILITY=avx2 on an AVX-512 machine, so the rest of the suite keeps the native kernels.)
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2", "FAISS_OPT_LEVEL": "avx2"}


def run(name, out):
    # The recorded configs are version-1 (flat) configs: read as a checkpoint of then would be.
    config = PretrainConfig.from_dict({**GOLDEN["configs"][name], "out": str(out)})
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pretrain(config, progress=False)


def run_all(root: Path) -> None:
    """Every golden run and the supervised baseline into ``root``, their losses in results.json."""
    losses = {name: [row["loss"] for row in run(name, root / name).history]
              for name in GOLDEN["configs"]}
    golden = json.loads((HERE / "supervised_engine.json").read_text())
    options = {k: v for k, v in golden["supervised_options"].items() if k != "like"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_supervised(root / golden["supervised_options"]["like"] / "checkpoints" / "last.ckpt",
                         root / "supervised", data="digits", progress=False, **options)
    (root / "results.json").write_text(json.dumps(losses))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    done = subprocess.run([sys.executable, __file__, str(root)], env={**os.environ, **AVX2},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, json.loads((root / "results.json").read_text())


@pytest.mark.parametrize("name", ["v1-faiss", "v1-torch", "v1-strong", "v2"])
def test_engine_reproduces_the_golden_run(runs, name):
    root, losses = runs
    expected = GOLDEN["runs"][name]
    np.testing.assert_equal(losses[name], expected["losses"])
    for epoch, ids in enumerate(expected["assignments"]):
        saved = np.load(root / name / "assignments" / f"epoch_{epoch:03d}.npy")
        np.testing.assert_array_equal(saved, ids, err_msg=f"epoch {epoch}")
    state = torch.load(root / name / "checkpoints" / "last.ckpt", weights_only=True)
    assert weights_hash(state["backbone"]) == expected["backbone_sha256"]


def test_supervised_baseline_reproduces_its_engine_golden_run(runs):
    # Recorded under the engine (see record.py: the baseline now seeds every epoch, so its
    # pre-engine weights, GOLDEN["runs"]["supervised"], are not expected any more).
    root, _ = runs
    golden = json.loads((HERE / "supervised_engine.json").read_text())
    state = torch.load(root / "supervised" / "checkpoints" / "last.ckpt", weights_only=True)
    assert weights_hash(state["backbone"]) == golden["supervised"]["backbone_sha256"]
    assert [row["epoch"] for row in state["history"]] == [1, 2]


if __name__ == "__main__":
    run_all(Path(sys.argv[1]))
