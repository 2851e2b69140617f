"""A killed benchmark, given the same command again, ends with the results of an uninterrupted
run: ``benchmark linear`` (per-epoch probe state), ``benchmark svm`` and ``benchmark lowshot``
(feature cache, per-layer and per-k progress). Each kill is a SIGKILL at a chosen point
(``kill_bench_at.py``); results are compared but for their seconds.

Three kill points run by default; DEEPCLUSTER_ALL_FAULTS=1 runs them all."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from deepcluster.benchmarks import svm
from deepcluster.benchmarks.linear_state import STATE_FILE
from deepcluster.benchmarks.svm_progress import PROGRESS_FILE
from deepcluster.checkpoint import save_checkpoint
from deepcluster.cli import main
from deepcluster.config import PretrainConfig
from deepcluster.models import build_backbone

KILL = Path(__file__).with_name("kill_bench_at.py")
ALL = os.environ.get("DEEPCLUSTER_ALL_FAULTS") == "1"
SHORT_COSTS = (1.0, 0.1, 0.01)  # what kill_bench_at.py makes of the vissl list

# 300 training digits in batches of 64: 5 steps per epoch, 3 epochs; 100 validation digits.
LINEAR = ["--data", "digits", "--epochs", "3", "--milestones", "2", "--subset", "300",
          "--test-subset", "100", "--batch-size", "64", "--threads", "1", "--seed", "3"]
SVM = ["--jobs", "1", "--costs", "vissl", "--layers", "feature5,avgpool"]
LOWSHOT = ["--jobs", "1", "--costs", "vissl", "--ks", "1,2", "--samples", "2"]


def maybe(points, in_ci):
    return [p if p in in_ci or ALL else
            pytest.param(*p, marks=pytest.mark.skip("DEEPCLUSTER_ALL_FAULTS=1")) for p in points]


def cli(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def killed(point: str, count: int, *args) -> None:
    """``deepcluster ARGS`` in its own process, killed with SIGKILL at ``point``."""
    run = subprocess.run([sys.executable, str(KILL), point, str(count), *map(str, args)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stdout[-1000:] + run.stderr[-2000:]


def without_seconds(value):
    """The results but for wall-clock times (and the Markdown, which shows them)."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items()
                if "seconds" not in k and k != "markdown"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def results(folder: Path) -> dict:
    return without_seconds(json.loads((folder / "results.json").read_text()))


def leftovers(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp")
                  or p.name in (STATE_FILE, PROGRESS_FILE))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained small CNN (16 px, Sobel) saved as a pretraining checkpoint."""
    config = PretrainConfig(data="digits", arch="small-cnn", image_size=16, seed=0)
    torch.manual_seed(config.seed)
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    save_checkpoint({"config": config.to_dict(), "epoch": 0,
                     "backbone": build_backbone(config.arch, config.sobel).state_dict()}, path)
    return path


# ----------------------------------------------------------------------------------------------
# benchmark linear


@pytest.fixture(scope="module")
def straight_linear(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("linear") / "straight"
    cli("benchmark", "linear", "--checkpoint", checkpoint, *LINEAR, "--out", out)
    return out


def assert_same_probe(a: Path, b: Path) -> None:
    assert results(a) == results(b)
    heads_a = torch.load(a / "probe.ckpt", weights_only=True)["probe"]
    heads_b = torch.load(b / "probe.ckpt", weights_only=True)["probe"]
    assert heads_a.keys() == heads_b.keys()
    for name, value in heads_a.items():
        assert torch.equal(value, heads_b[name]), name
    with open(a / "metrics.csv") as one, open(b / "metrics.csv") as other:
        assert list(csv.reader(one)) == list(csv.reader(other))


# (point, count, epochs the rerun finds done)
LINEAR_POINTS = [
    ("forward", 3, 0),   # extracting the validation features (1: sizing the heads, 2: training)
    ("probe", 8, 1),     # epoch 2, third step: continues from epoch 1's state
    ("save", 2, 1),      # half-way through writing epoch 2's state: epoch 1's is still whole
    ("results", 1, 3),   # all epochs done, probe.ckpt written, results.json not yet
]


@pytest.mark.parametrize("point,count,done", maybe(LINEAR_POINTS, {("probe", 8, 1)}),
                         ids=[f"{p}-{n}" for p, n, _ in LINEAR_POINTS])
def test_killed_linear_probe_resumes_to_the_same_heads_and_results(
        checkpoint, straight_linear, tmp_path, point, count, done):
    out = tmp_path / "run"
    command = ["benchmark", "linear", "--checkpoint", checkpoint, *LINEAR, "--out", out]
    killed(point, count, *command)
    again = cli(*command)
    assert (f"{done} of 3 epochs done" in again.output) == (done > 0), again.output
    assert_same_probe(out, straight_linear)
    assert leftovers(out) == []


@pytest.mark.skipif(not ALL, reason="DEEPCLUSTER_ALL_FAULTS=1")
@pytest.mark.parametrize("workers", [0, 1])
def test_killed_streamed_probe_resumes_to_the_same_heads_and_results(checkpoint, tmp_path,
                                                                     workers):
    # a random augmentation on every batch (in this process, or in a loader worker)
    command = ["benchmark", "linear", "--checkpoint", checkpoint, *LINEAR, "--augmentation",
               "crop-flip", "--workers", workers]
    cli(*command, "--out", tmp_path / "straight")
    killed("probe", 8, *command, "--out", tmp_path / "run")
    assert "1 of 3 epochs done" in cli(*command, "--out", tmp_path / "run").output
    assert_same_probe(tmp_path / "run", tmp_path / "straight")


def test_linear_state_of_another_config_is_refused_unless_restart(checkpoint, tmp_path,
                                                                  monkeypatch):
    import deepcluster.benchmarks.linear_run as linear_run

    out = tmp_path / "run"
    command = ["benchmark", "linear", "--checkpoint", checkpoint, *LINEAR, "--out", out]

    def crash_after_training():
        def crash(*args):
            raise RuntimeError("crashed after the last epoch")
        with monkeypatch.context() as patch:
            patch.setattr(linear_run, "evaluate", crash)
            assert cli(*command, ok=False).exit_code == 1
        assert (out / STATE_FILE).is_file()

    crash_after_training()
    refused = cli(*command, "--lr", "0.1", ok=False)
    assert refused.exit_code == 1
    line = refused.output.strip().splitlines()[-1]
    assert f"{out / STATE_FILE}: the state of a probe with lr=0.01, not 0.1" in line
    assert "--restart" in line and "Traceback" not in refused.output

    # more epochs continue the same probe (its milestones do not depend on the length)
    longer = cli(*command, "--epochs", "4")
    assert "3 of 4 epochs done" in longer.output
    assert len(json.loads((out / "results.json").read_text())["history"]) == 4
    assert leftovers(out) == []

    crash_after_training()
    fresh = cli(*command, "--lr", "0.1", "--restart")
    assert "resuming" not in fresh.output
    assert json.loads((out / "results.json").read_text())["config"]["lr"] == 0.1
    assert leftovers(out) == []


def test_unreadable_linear_state_is_named(checkpoint, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / STATE_FILE).write_bytes(b"PK\x03\x04 not a whole file")
    refused = cli("benchmark", "linear", "--checkpoint", checkpoint, *LINEAR, "--out", out,
                  ok=False)
    assert refused.exit_code == 1
    line = refused.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: {out / STATE_FILE}: not a readable probe state")


# ----------------------------------------------------------------------------------------------
# benchmark svm and benchmark lowshot


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    from deepcluster.data import fashion_mnist_folder
    from deepcluster.voc_generator import make_voc

    if fashion_mnist_folder() is None:
        pytest.skip("Fashion-MNIST IDX files not installed (make-voc needs them)")
    return make_voc(tmp_path_factory.mktemp("voc"), trainval=60, test=30, seed=1)


@pytest.fixture(scope="module")
def straight_svm(checkpoint, voc, tmp_path_factory) -> tuple[Path, Path]:
    """(the folder after ``benchmark svm``, the folder after ``benchmark lowshot`` too)."""
    root = tmp_path_factory.mktemp("svm")
    out = root / "straight"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(svm.COST_LISTS, "vissl", SHORT_COSTS)
        cli("benchmark", "svm", "--checkpoint", checkpoint, "--voc", voc, "--out", out, *SVM)
        shutil.copytree(out, root / "after-svm")
        cli("benchmark", "lowshot", "--checkpoint", checkpoint, "--voc", voc, "--out", out,
            *LOWSHOT)
    return root / "after-svm", out


# Both layers (feature5, avgpool) from one extraction pass per split: 2 forwards (trainval,
# test) and 4 cache files (trainval-feature5, trainval-avgpool, test-...); per layer 10 classes x
# 3 folds x 1 cost group of CV fits, then 10 refits; low-shot on the best layer: 2 samples x 10
# classes tasks per k. (command, point, count, layers or ks the rerun still evaluates)
SVM_POINTS = [
    ("svm", "forward", 2, 2),     # extracting the test split (trainval is cached)
    ("svm", "npz", 3, 2),         # half-way through writing the first test-split cache file
    ("svm", "cv", 5, 2),          # in the first layer's cost search
    ("svm", "refit", 13, 1),      # between classes of the second layer: the first one is kept
    ("svm", "results", 1, 0),     # every layer done, results.json not yet written
    ("lowshot", "lowshot", 25, 1),    # k=2 (k=1 is kept)
]


@pytest.mark.parametrize("command,point,count,left",
                         maybe(SVM_POINTS, {("svm", "refit", 13, 1), ("lowshot", "lowshot", 25, 1)}),
                         ids=[f"{c}-{p}-{n}" for c, p, n, _ in SVM_POINTS])
def test_killed_svm_benchmark_continues_to_the_same_results(
        checkpoint, voc, straight_svm, tmp_path, command, point, count, left):
    import deepcluster.benchmarks.svm_run as svm_run

    after_svm, after_lowshot = straight_svm
    out = tmp_path / "run"
    if command == "lowshot":
        shutil.copytree(after_svm, out)  # low-shot runs on the SVM's best layer
    args = ["benchmark", command, "--checkpoint", checkpoint, "--voc", voc, "--out", out,
            *(SVM if command == "svm" else LOWSHOT)]
    killed(point, count, *args)
    if point in ("cv", "refit", "lowshot", "results"):
        assert (out / PROGRESS_FILE).is_file()
    evaluated = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(svm.COST_LISTS, "vissl", SHORT_COSTS)
        name = "svm_evaluate" if command == "svm" else "lowshot_evaluate"
        evaluate = getattr(svm_run, name)
        patch.setattr(svm_run, name, lambda *a, **k: evaluated.append(1) or evaluate(*a, **k))
        cli(*args)
    assert len(evaluated) == left  # what the killed run finished is not done again
    expected = after_svm if command == "svm" else after_lowshot
    assert results(out) == results(expected)
    assert leftovers(out) == []


def test_partial_cache_entry_is_never_read(checkpoint, voc, straight_svm, tmp_path):
    after_svm, _ = straight_svm
    out = tmp_path / "run"
    shutil.copytree(after_svm, out)
    (out / "results.json").unlink()
    entry = next((out / "features").rglob("test-avgpool.npz"))
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2])  # as a copy cut short leaves it
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(svm.COST_LISTS, "vissl", SHORT_COSTS)
        cli("benchmark", "svm", "--checkpoint", checkpoint, "--voc", voc, "--out", out, *SVM)
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"]["deepcluster"]["svm"]["features_extracted"] == ["avgpool"]
    expected = results(after_svm)
    expected["runs"]["deepcluster"]["svm"]["features_extracted"] = ["avgpool"]
    assert results(out) == expected


def test_progress_parts_are_kept_only_for_the_same_data_and_settings(tmp_path):
    from deepcluster.benchmarks.svm_progress import Progress

    identity = {"checkpoint_sha256": "ab", "classes": ("car", "cat")}
    first = Progress(tmp_path, identity)
    first.start("svm/deepcluster", {"cost_values": (1.0, 0.1), "seed": 0})
    first.extracting("svm/deepcluster", ["avgpool"])
    first.done("svm/deepcluster", "avgpool", {"map": 50.0})
    first.start("lowshot/deepcluster", {"cost_values": [1.0], "samples": 2, "seed": 0})
    first.done("lowshot/deepcluster", "avgpool k=1", {"ks": [1]})

    again = Progress(tmp_path, identity)  # the rerun: same checkpoint, images, settings
    again.start("svm/deepcluster", {"cost_values": [1.0, 0.1], "seed": 0})
    assert again.part("svm/deepcluster", "avgpool") == {"map": 50.0}
    assert again.extracted("svm/deepcluster") == ["avgpool"]
    again.start("lowshot/deepcluster", {"cost_values": [1.0], "samples": 3, "seed": 0})
    assert again.part("lowshot/deepcluster", "avgpool k=1") is None  # other settings
    again.finish("lowshot")
    assert Progress(tmp_path, identity).entries.keys() == {"svm/deepcluster"}
    assert Progress(tmp_path, {**identity, "checkpoint_sha256": "cd"}).entries == {}
    Progress(tmp_path, identity).finish("svm")
    assert not (tmp_path / PROGRESS_FILE).exists()
    (tmp_path / PROGRESS_FILE).write_text('{"identity": ')  # not this tool's: ignored
    assert Progress(tmp_path, identity).entries == {}


def test_a_second_benchmark_into_the_same_folder_is_refused(checkpoint, tmp_path):
    from deepcluster.engine.run_lock import RunLock

    lock = RunLock(tmp_path / "run")
    assert lock.acquire() is None  # as a run in progress holds it
    try:
        refused = cli("benchmark", "linear", "--checkpoint", checkpoint, *LINEAR, "--out",
                      tmp_path / "run", ok=False)
    finally:
        lock.release()
    assert refused.exit_code == 1
    assert "is in use by another run" in refused.output.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "results.json").exists()
