"""The engine reproduces the golden runs recorded with the code before it (tests/golden/record.py):
per-epoch cluster ids, losses and the final backbone, bit for bit on the CPU."""

import json
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


def run(name, out):
    # The recorded configs are version-1 (flat) configs: read as a checkpoint of then would be.
    config = PretrainConfig.from_dict({**GOLDEN["configs"][name], "out": str(out)})
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pretrain(config, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    return root, {name: run(name, root / name) for name in GOLDEN["configs"]}


@pytest.mark.parametrize("name", ["v1-faiss", "v1-torch", "v1-strong", "v2"])
def test_engine_reproduces_the_golden_run(runs, name):
    root, results = runs
    expected, result = GOLDEN["runs"][name], results[name]
    np.testing.assert_equal([row["loss"] for row in result.history], expected["losses"])
    for epoch, ids in enumerate(expected["assignments"]):
        saved = np.load(root / name / "assignments" / f"epoch_{epoch:03d}.npy")
        np.testing.assert_array_equal(saved, ids, err_msg=f"epoch {epoch}")
    state = torch.load(result.checkpoint, weights_only=True)
    assert weights_hash(state["backbone"]) == expected["backbone_sha256"]


def test_supervised_baseline_reproduces_its_engine_golden_run(runs, tmp_path):
    # Recorded under the engine (see record.py: the baseline now seeds every epoch, so its
    # pre-engine weights, GOLDEN["runs"]["supervised"], are not expected any more).
    root, results = runs
    golden = json.loads((HERE / "supervised_engine.json").read_text())
    options = {k: v for k, v in golden["supervised_options"].items() if k != "like"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint = train_supervised(results[golden["supervised_options"]["like"]].checkpoint,
                                      tmp_path / "supervised", data="digits", progress=False,
                                      **options)
    state = torch.load(checkpoint, weights_only=True)
    assert weights_hash(state["backbone"]) == golden["supervised"]["backbone_sha256"]
    assert [row["epoch"] for row in state["history"]] == [1, 2]
