"""Checkpoints and result files, written atomically (temp file, then rename) and loaded safely."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import PretrainConfig
from .models import build_backbone


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temp_path)`` then rename onto ``path``, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise
    return path


def save_epoch_checkpoint(state: dict[str, Any], path: str | os.PathLike, keep_every: int) -> Path:
    """Write ``state`` (with its ``epoch``) to ``path`` (``last.ckpt``), and also beside it as
    ``epoch_NNN.ckpt`` when the epoch is a multiple of ``keep_every`` (0: never)."""
    path = Path(path)
    if keep_every and state["epoch"] % keep_every == 0:
        save_checkpoint(state, path.parent / f"epoch_{state['epoch']:03d}.ckpt")
    return save_checkpoint(state, path)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda temp: torch.save(state, temp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt or foreign file
        raise ValueError(f"checkpoint {path} cannot be loaded: {error}") from error
    for key in ("config", "backbone"):
        if key not in state:
            raise ValueError(f"checkpoint {path} has no '{key}' entry; is it a deepcluster checkpoint?")
    return state


def save_json(data: Any, path: str | os.PathLike) -> Path:
    def write(temp: str) -> None:
        with open(temp, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
    return atomic_write(path, write)


def save_npy(array: np.ndarray, path: str | os.PathLike) -> Path:
    def write(temp: str) -> None:
        with open(temp, "wb") as handle:
            np.save(handle, array)
    return atomic_write(path, write)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    def write(temp: str) -> None:
        with open(temp, "wb") as handle:
            np.savez(handle, **arrays)
    return atomic_write(path, write)


def backbone_from_checkpoint(path: str | os.PathLike, random_init: bool = False):
    """The backbone a pretraining checkpoint describes, and its config.

    With ``random_init`` the same architecture is built but keeps its seeded initial weights, the
    baseline every benchmark reports beside the trained network.
    """
    state = load_checkpoint(path)
    config = PretrainConfig.from_dict(state["config"], source=str(path))
    torch.manual_seed(config.seed)
    backbone = build_backbone(config.arch, config.sobel)
    if not random_init:
        backbone.load_state_dict(state["backbone"])
    return backbone.eval(), config
