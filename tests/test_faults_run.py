"""The faults a long pretraining run meets, one test per row of docs/faults.md: kills at any point
of a run, divergence, a full disk, a second run in the same folder, a dying loader worker,
Ctrl-C, leftovers of a killed write, file modes, and errors that name their cause.

The kill points run three in CI; DEEPCLUSTER_ALL_FAULTS=1 runs all ten."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deepcluster.checkpoint import save_checkpoint
from deepcluster.engine.run_lock import RunLock
from run_helpers import TINY, assert_same_run, cli

KILL_AT = Path(__file__).with_name("kill_at.py")
EPOCHS = 2
# A run of TINY: 2 extraction forwards per clustering (3 clusterings) and 10 steps per epoch,
# 26 forwards in all; 5 checkpoint files, with epoch_NNN files off: last.ckpt at epochs 0, 1, 2.
FORWARDS = 26
seeded = np.random.default_rng(0).choice(np.arange(1, FORWARDS + 1), 4, replace=False)
POINTS = [("forward", int(n)) for n in sorted(seeded)] + [
    ("forward", 13),      # the first extraction forward after epoch 1
    ("clustering", 2),    # the k-means after epoch 1
    ("checkpoint", 1),    # half-way through writing the epoch-0 checkpoint
    ("checkpoint", 3),    # ... the last one
    ("assignments", 2),   # between epoch 1's checkpoint and its cluster-id file
    ("metrics", 2),       # before metrics.csv gets epoch 1's row
]
IN_CI = {("forward", 13), ("clustering", 2), ("checkpoint", 3)}
ALL = os.environ.get("DEEPCLUSTER_ALL_FAULTS") == "1"


def deepcluster(*args, harness=(), timeout=300) -> subprocess.CompletedProcess:
    """``deepcluster ARGS`` in its own process (through the kill harness where given)."""
    entry = [str(h) for h in harness] if harness else ["-m", "deepcluster.cli"]
    return subprocess.run([sys.executable, *entry, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""


def temps(run: Path) -> list[Path]:
    return [p for folder in (run, run / "checkpoints", run / "assignments")
            for p in folder.glob(".*.tmp")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "straight"
    cli("pretrain", *TINY, "--epochs", EPOCHS, "--out", out)
    return out


@pytest.mark.parametrize("point,count", [
    p if p in IN_CI or ALL else pytest.param(*p, marks=pytest.mark.skip("DEEPCLUSTER_ALL_FAULTS=1"))
    for p in POINTS], ids=[f"{p}-{n}" for p, n in POINTS])
def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_run(straight, tmp_path, point, count):
    run = tmp_path / "run"
    flags = [*TINY, "--epochs", EPOCHS, "--out", run]
    killed = deepcluster("pretrain", *flags, harness=(KILL_AT, point, count))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # the same command with --resume auto, as a requeued job reruns it
    resumed = deepcluster("pretrain", *flags, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(run, straight)
    assert temps(run) == []  # the killed write's temporary file is cleaned up


def test_divergence_stops_naming_epoch_step_and_cause_and_keeps_the_last_checkpoint(tmp_path):
    # lr 1e12: the loss of epoch 1's second step is NaN (the third without the preset's hidden
    # layer); lr 1e6 with 2 steps per epoch: the loss stays finite but the weights do not, and the
    # features of the clustering after it are NaN
    for backend, lr, batch, where in (
            ("torch", "1e12", 32, "step 2 of 10: the loss is nan"),
            ("faiss", "1e6", 256, "in the clustering after it: 5120 of the features")):
        run = tmp_path / backend
        result = deepcluster("pretrain", *TINY, "--epochs", 3, "--lr", lr, "--batch-size", batch,
                             "--kmeans-backend", backend, "--out", run)
        assert result.returncode == 1
        line = last_line(result)
        assert line.startswith(f"Error: training diverged in epoch 1, {where}"), line
        assert f"likely a learning rate too high (lr={float(lr):g})" in line
        assert f"the last good checkpoint {run / 'checkpoints' / 'last.ckpt'} (epoch 0)" in line
        assert "Traceback" not in result.stderr
        state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert state["epoch"] == 0
        assert all(torch.isfinite(v).all() for v in state["backbone"].values()
                   if v.is_floating_point())


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only): the tiny run's config fits, its 4 MB checkpoint does not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                                            str(mount)], capture_output=True).returncode:
        pytest.skip("needs root and mount to make a full disk")
    yield mount
    subprocess.run(["umount", str(mount)])


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing_half_written(small_disk):
    kept = small_disk / "kept.ckpt"
    save_checkpoint({"w": torch.arange(10)}, kept)
    with pytest.raises(OSError, match=f"^cannot write {kept}: No space left on device$"):
        save_checkpoint({"w": torch.randn(2 << 20)}, kept)
    assert torch.equal(torch.load(kept, weights_only=True)["w"], torch.arange(10))
    kept.unlink()
    run = small_disk / "run"
    result = deepcluster("pretrain", *TINY, "--epochs", 1, "--out", run)
    assert result.returncode == 1
    assert last_line(result) == (f"Error: cannot write {run / 'checkpoints' / 'last.ckpt'}: "
                                 "No space left on device")
    assert temps(run) == [] and not (run / "checkpoints" / "last.ckpt").exists()


def test_a_second_run_into_the_same_folder_refuses(tmp_path):
    run = tmp_path / "run"
    lock = RunLock(run)
    assert lock.acquire() is None
    try:
        result = cli("pretrain", *TINY, "--epochs", 1, "--out", run, ok=False)
        assert result.exit_code == 1
        assert f"{run} is in use by another run (process {os.getpid()} holds {run / '.lock'})" \
            in result.output
        assert not (run / "checkpoints").exists()
    finally:
        lock.release()
    cli("pretrain", *TINY, "--epochs", 1, "--out", run)  # free again


def test_a_killed_loader_worker_is_a_clear_error_not_a_hang(tmp_path):
    result = deepcluster("pretrain", *TINY, "--epochs", 1, "--workers", 1, "--out", tmp_path / "w",
                         harness=(KILL_AT, "worker", 2), timeout=120)
    assert result.returncode == 1
    line = last_line(result)
    assert "DataLoader worker" in line and "most often for lack of memory" in line, line


def test_ctrl_c_exits_130_and_the_run_resumes_to_the_uninterrupted_one(straight, tmp_path):
    run = tmp_path / "run"
    flags = [*TINY, "--epochs", EPOCHS, "--out", run]
    # SIG_DFL in the child: a test run started in the background (nohup, &) ignores SIGINT, the
    # child would inherit that, and Python keeps an ignored SIGINT ignored.
    process = subprocess.Popen([sys.executable, "-m", "deepcluster.cli", "pretrain", *map(str, flags)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoint = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert deepcluster("pretrain", *flags, "--resume", "auto").returncode == 0
    assert_same_run(run, straight)


def test_usage_errors_exit_2_and_debug_shows_the_traceback(tmp_path):
    assert cli("pretrain", "--no-such-flag", ok=False).exit_code == 2
    result = deepcluster("pretrain", *TINY, "--lr", "1e12", "--kmeans-backend", "torch",
                         "--out", tmp_path / "a")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    result = deepcluster("--debug", "pretrain", *TINY, "--lr", "1e12", "--kmeans-backend", "torch",
                         "--out", tmp_path / "b")
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert "deepcluster.errors.Diverged: training diverged" in result.stderr


def test_run_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        cli("pretrain", *TINY, "--epochs", 1, "--out", tmp_path / "run")
    finally:
        os.umask(previous)
    for name in ("checkpoints/last.ckpt", "assignments/epoch_001.npy", "metrics.csv",
                 "config.yaml"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name


def test_k_below_2_is_refused_at_config_time_with_one_rule(tmp_path):
    for k in (0, 1):
        result = cli("pretrain", "--data", tmp_path / "no-such-folder", "--k", k,
                     "--out", tmp_path / "x", ok=False)
        assert result.exit_code == 1 and f"k={k} must be at least 2" in result.output


def test_an_unknown_key_in_a_checkpoints_config_names_the_checkpoint(straight, tmp_path):
    state = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    state["config"]["no_such_key"] = 1
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    save_checkpoint(state, path)
    result = cli("pretrain", "--resume", path, "--epochs", 3, ok=False)
    assert result.exit_code == 1
    assert str(path) in result.output and "no_such_key" in result.output
