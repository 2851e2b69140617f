"""What the tests of whole runs share: a tiny run's flags, the CLI, and the check that two run
folders hold the same run."""

import csv
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

from deepcluster.cli import main

TINY = ["--data", "digits", "--image-size", "8", "--subset", "320", "--k", "10", "--pca-dim",
        "16", "--batch-size", "32", "--extract-batch-size", "160", "--threads", "1",
        "--precision", "32-true", "--seed", "5"]


def cli(*args, ok=True):
    result = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def without_timing(table: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith("_s")} for row in table]  # seconds


def assert_same_run(a: Path, b: Path) -> None:
    """Checkpoint weights, every epoch's assignments and every metrics row (but seconds) equal."""
    ka = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)
    kb = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)
    assert ka["epoch"] == kb["epoch"]
    for name, value in ka["backbone"].items():
        assert torch.equal(value, kb["backbone"][name]), name
    assert torch.equal(ka["assignments"], kb["assignments"])
    files = sorted(p.name for p in (a / "assignments").glob("*.npy"))
    assert files == sorted(p.name for p in (b / "assignments").glob("*.npy"))
    for name in files:
        np.testing.assert_array_equal(np.load(a / "assignments" / name),
                                      np.load(b / "assignments" / name))
    assert without_timing(rows(a)) == without_timing(rows(b))
