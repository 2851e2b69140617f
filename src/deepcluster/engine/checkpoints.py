"""The run's checkpoint: common keys plus the method's own state, written atomically after every
epoch (``checkpoints/last.ckpt``, and ``epoch_NNN.ckpt`` every ``keep_every`` epochs).

Common keys: ``format``, ``config`` (``PretrainConfig.to_dict``), ``epoch`` (epochs done),
``backbone`` (what every benchmark loads), ``optimizer``, ``rng`` and ``history`` (every row so
far). The method adds its own keys (DeepCluster: ``head``, ``assignments`` and, with a hidden
layer, ``hidden``; v2: ``projector``, ``prototypes``, ``memory``, ``assignments``), which keeps
the layout of earlier checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_checkpoint, save_epoch_checkpoint, save_npy
from ..config import PretrainConfig

FORMAT = "deepcluster-run/2"
COMMON_KEYS = ("format", "config", "epoch", "backbone", "optimizer", "rng", "history")


def checkpoint_path(out: str | Path) -> Path:
    return Path(out) / "checkpoints" / "last.ckpt"


def run_folder(checkpoint: str | Path) -> Path:
    """The run folder a checkpoint belongs to (``RUN/checkpoints/NAME.ckpt`` -> ``RUN``)."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return checkpoint.parent


def save_run_state(config: PretrainConfig, epoch: int, backbone: nn.Module,
                   optimizer: torch.optim.Optimizer, history: list[dict[str, Any]],
                   method_state: dict[str, Any]) -> Path:
    clash = sorted(set(method_state) & set(COMMON_KEYS))
    if clash:
        raise ValueError(f"method state may not use the engine's keys {', '.join(clash)}")
    state = {"format": FORMAT, "config": config.to_dict(), "epoch": epoch,
             "backbone": backbone.state_dict(), "optimizer": optimizer.state_dict(),
             "rng": torch.get_rng_state(), "history": history, **method_state}
    # epoch 0 (the untrained network's targets) goes to last.ckpt only
    return save_epoch_checkpoint(state, checkpoint_path(config.out),
                                 config.keep_every if epoch else 0)


def load_run_state(path: str | Path) -> tuple[dict[str, Any], PretrainConfig]:
    """A checkpoint (``weights_only=True``) and its config, upgraded if written by an earlier
    version of the tool."""
    state = load_checkpoint(path)
    if "imported" in state:  # another tool's weights (interop): no run to continue
        raise ValueError(f"checkpoint {path} holds imported weights ({state['imported']['layout']} "
                         "layout), not a pretraining run of this tool; it cannot be resumed")
    return state, PretrainConfig.from_dict(state["config"], source=str(path))


def keep_last_distances(folder: Path, epoch: int, distances: np.ndarray | None) -> None:
    """``distances_EPOCH.npy`` (float32) in ``folder``, and no other epoch's: the run report
    reads the last clustering's; a clustering without them leaves none."""
    if distances is not None:
        save_npy(distances.astype(np.float32), folder / f"distances_{epoch:03d}.npy")
    for old in folder.glob("distances_*.npy"):
        if distances is None or old.name != f"distances_{epoch:03d}.npy":
            old.unlink()
