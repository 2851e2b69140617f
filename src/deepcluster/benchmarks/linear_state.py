"""The linear probe's state between epochs, ``OUT/probe_state.ckpt``: a killed probe continues
from its last finished epoch instead of starting again.

Written atomically after every epoch: the heads, the optimizer, the lr scheduler, the loss
scaler of 16-mixed precision, the torch RNG states, the rows so far, and the identity of the run it belongs to (``probe_identity``: the
config but for the fields that may change on resume, the checkpoint's SHA-256, random init). A
run that finds a state of its own identity continues from it; a state of another run is refused
with the first difference named, since throwing away hours of training over a mistyped flag is
worse than asking for ``--restart``. The state is removed once the results are written.

Each epoch draws its batches from a seed of its own (``linear_features.epoch_seed``), so the
resumed run ends with the heads and results of an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write
from ..checkpoint import save_checkpoint
from .linear_config import LinearConfig

STATE_FILE = "probe_state.ckpt"
METRICS_FILE = "metrics.csv"
FORMAT = "deepcluster-linear-probe-state-1"
# May change between the killed run and its resumption: no effect on the numbers (epochs: only
# the ones still to train).
RESUMABLE_FIELDS = ("epochs", "workers", "threads")


def probe_identity(config: LinearConfig, checkpoint_sha256: str, random_init: bool
                   ) -> dict[str, Any]:
    """What a state must match to be continued: the config (but ``RESUMABLE_FIELDS``), the
    checkpoint's content and whether the network is the untrained one."""
    fixed = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_FIELDS}
    return {"config": fixed, "checkpoint_sha256": checkpoint_sha256, "random_init": random_init}


def load_state(out: str | os.PathLike, identity: dict[str, Any], epochs: int,
               restart: bool = False) -> dict[str, Any] | None:
    """The state to continue from (None: start afresh). A state of another run, or with more
    epochs than ``epochs``, is a ValueError naming the file and the difference, unless
    ``restart`` (then it is ignored, and replaced after the first epoch)."""
    path = Path(out) / STATE_FILE
    if restart or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a file this tool did not write whole: never half-read it
        raise ValueError(f"{path}: not a readable probe state ({' '.join(str(error).split())[:200]}); "
                         "pass --restart to discard it") from None
    problem = _difference(state, identity, epochs)
    if problem:
        raise ValueError(f"{path}: {problem}; pass --restart to discard it and start again, or "
                         "another --out")
    return state


def _difference(state: Any, identity: dict[str, Any], epochs: int) -> str | None:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return "not a probe state of this tool"
    saved = state["identity"]
    if saved["checkpoint_sha256"] != identity["checkpoint_sha256"]:
        return "the state of a probe of another checkpoint (its SHA-256 differs)"
    if saved["random_init"] != identity["random_init"]:
        return f"the state of a probe with random_init={saved['random_init']}"
    for name, value in identity["config"].items():
        if saved["config"].get(name) != value:
            return (f"the state of a probe with {name}={saved['config'].get(name)!r}, not "
                    f"{value!r}")
    if state["epoch"] > epochs:
        return f"the state of a probe already {state['epoch']} epochs in, more than epochs={epochs}"
    return None


def save_state(out: str | os.PathLike, identity: dict[str, Any], epoch: int, probe: nn.Module,
               optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
               history: list[dict[str, Any]], train_seconds: float) -> Path:
    """Write the state after ``epoch`` (1-based, finished) epochs, atomically. ``scaler``: the
    precision's loss scaler (16-mixed), or None."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {"format": FORMAT, "identity": identity, "epoch": epoch,
             "probe": probe.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": rng, "history": history,
             "train_seconds": train_seconds}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return save_checkpoint(state, Path(out) / STATE_FILE)


def restore(state: dict[str, Any], probe: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, scaler: Any) -> None:
    """Put the saved heads, optimizer, scheduler, loss scaler and RNG states back (after
    ``fabric.setup``: the optimizer state then lands on the parameters' device)."""
    probe.load_state_dict(state["probe"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def remove_state(out: str | os.PathLike) -> None:
    """The run is finished (its results written): the state is no longer needed."""
    (Path(out) / STATE_FILE).unlink(missing_ok=True)


def write_metrics(history: list[dict[str, Any]], out: str | os.PathLike) -> Path:
    """``OUT/metrics.csv``, one row per epoch so far, rewritten whole (atomically) each epoch."""
    columns = list(dict.fromkeys(key for row in history for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return atomic_write(Path(out) / METRICS_FILE, lambda temp: Path(temp).write_text(text.getvalue()))
