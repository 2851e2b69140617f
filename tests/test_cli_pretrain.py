"""What a user does with ``deepcluster pretrain``: start a run, resume it (by its checkpoint, its
folder or ``auto``), after a kill -9 too, start one from a config file, and get one clear line for
what cannot be done."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from run_helpers import TINY, assert_same_run, cli, rows

KILL_AT = Path(__file__).with_name("kill_at.py")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 3-epoch run."""
    out = tmp_path_factory.mktemp("cli") / "straight"
    cli("pretrain", *TINY, "--epochs", 3, "--out", out)
    return out


def test_resume_by_checkpoint_continues_in_the_runs_own_folder(straight, tmp_path, monkeypatch):
    run = tmp_path / "fm"
    cli("pretrain", *TINY, "--epochs", 2, "--out", run)
    monkeypatch.chdir(tmp_path)  # the default out (runs/pretrain) would be here
    result = cli("pretrain", "--resume", run / "checkpoints" / "last.ckpt", "--epochs", 3)
    assert f"checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in result.output
    assert not (tmp_path / "runs").exists()
    assert [int(r["epoch"]) for r in rows(run)] == [0, 1, 2, 3]  # every earlier row, once
    assert_same_run(run, straight)


def test_kill_9_mid_epoch_then_resume_auto_gives_the_uninterrupted_run(straight, tmp_path):
    # The kill lands at a fixed point (the 30th backbone forward: epoch 2's fourth training step
    # of TINY's 12 forwards per epoch), not after a sleep, which a fast machine outran.
    run = tmp_path / "killed"
    command = [sys.executable, str(KILL_AT), "forward", "30", "pretrain", *map(str, TINY),
               "--epochs", "3", "--out", str(run)]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    cli("pretrain", "--resume", "auto", "--out", run)  # the folder alone: its config is kept
    assert_same_run(run, straight)


def test_resume_refusals_and_nothing_to_do(straight, tmp_path):
    ckpt = straight / "checkpoints" / "last.ckpt"
    result = cli("pretrain", "--resume", ckpt, "--k", 20, ok=False)
    assert result.exit_code != 0 and "cannot change k (10 -> 20)" in result.output
    result = cli("pretrain", "--resume", straight, "--epochs", 2, ok=False)
    assert result.exit_code != 0 and "has 3 epochs done; epochs=2 asks for fewer" in result.output
    result = cli("pretrain", "--resume", straight)
    assert "already has 3 of 3 epochs" in result.output
    result = cli("pretrain", *TINY, "--out", straight, ok=False)
    assert result.exit_code != 0 and "already holds a run" in result.output
    assert "--resume auto" in result.output


def test_a_cosine_schedule_keeps_its_planned_length(tmp_path):
    run = tmp_path / "cosine"
    cli("pretrain", *TINY, "--epochs", 1, "--lr-schedule", "cosine", "--out", run)
    result = cli("pretrain", "--resume", run, "--epochs", 2, ok=False)
    assert result.exit_code != 0 and "planned over 1 epochs" in result.output


def test_config_file_reproduces_a_run_and_flags_override_it(straight, tmp_path):
    again = tmp_path / "again"
    cli("pretrain", "--config", straight / "config.yaml", "--out", again)
    assert_same_run(again, straight)
    partial = tmp_path / "partial.yaml"
    partial.write_text("k: 7\nepochs: 1\n")
    other = tmp_path / "other"
    cli("pretrain", "--config", partial, *TINY[:8], "--out", other, "--epochs", 1)
    assert torch.load(other / "checkpoints" / "last.ckpt", weights_only=True)["config"]["k"] == 10
    bad = tmp_path / "bad.yaml"
    bad.write_text("kk: 7\n")
    result = cli("pretrain", "--config", bad, ok=False)
    assert result.exit_code != 0 and f"{bad}: unknown config key(s): kk" in result.output


def test_an_option_of_another_method_is_an_error(tmp_path):
    result = cli("pretrain", *TINY, "--prototype-sets", 2, "--out", tmp_path / "x", ok=False)
    assert result.exit_code != 0
    assert "prototype_sets=2 is a deepcluster-v2 option; method 'deepcluster' does not use it" \
        in result.output


def test_a_small_crop_range_that_ends_before_it_starts_is_refused(tmp_path):
    result = cli("pretrain", *TINY, "--small-crops", 1, "--augmentation", "strong",
                 "--small-crop-min-scale", 0.3, "--out", tmp_path / "y", ok=False)
    assert "small_crop_min_scale=0.3 must be below small_crop_max_scale=0.14" in result.output
    assert not (tmp_path / "y").exists()


def test_method_v2_without_a_preset_starts_from_the_v2_preset(tmp_path):
    from deepcluster.cli.pretrain import run_config
    from deepcluster.presets import get_preset

    config, _ = run_config(None, None, None, {"method": "deepcluster-v2", "out": str(tmp_path)})
    assert config == get_preset("fashion-mnist-v2").override(out=str(tmp_path))
    config, _ = run_config(None, None, None, {"out": str(tmp_path)})
    assert config == get_preset("fashion-mnist").override(out=str(tmp_path))
