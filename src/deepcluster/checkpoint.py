"""Checkpoints and result files, written atomically (temp file, then rename) and loaded safely:
``load_checkpoint`` reads this tool's checkpoints and every layout of ``interop`` with
``weights_only=True``, and ``backbone_from_checkpoint`` gives the network every command uses."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .atomic import atomic_write, write_through
from .config import PretrainConfig
from .interop.importer import read_checkpoint
from .interop.network import backbone_from_state
from .models import Backbone, build_backbone


def save_epoch_checkpoint(state: dict[str, Any], path: str | os.PathLike, keep_every: int) -> Path:
    """Write ``state`` (with its ``epoch``) to ``path`` (``last.ckpt``), and also beside it as
    ``epoch_NNN.ckpt`` when the epoch is a multiple of ``keep_every`` (0: never)."""
    path = Path(path)
    if keep_every and state["epoch"] % keep_every == 0:
        save_checkpoint(state, path.parent / f"epoch_{state['epoch']:03d}.ckpt")
    return save_checkpoint(state, path)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda temp: write_through(temp, lambda file: torch.save(state, file)))


_FORCED_FORMATS: ContextVar[dict[Path, str]] = ContextVar("forced_formats", default={})


@contextmanager
def reading_as(path: str | os.PathLike, format: str | None) -> Iterator[None]:
    """Within the block, every load of ``path`` reads it as the layout ``format`` (None or
    ``auto``: detected from the keys): what a command's ``--format`` does for its
    ``--checkpoint``, down to the benchmark code that loads it."""
    if format in (None, "auto"):
        yield
        return
    token = _FORCED_FORMATS.set({**_FORCED_FORMATS.get(), Path(path).resolve(): format})
    try:
        yield
    finally:
        _FORCED_FORMATS.reset(token)


def load_checkpoint(path: str | os.PathLike, format: str | None = None) -> dict[str, Any]:
    """A checkpoint in this tool's layout (``config``, ``backbone``, ...): this tool's own, or any
    layout ``interop`` reads (MMSelfSup, the original DeepCluster, ResNet state dicts, exports),
    detected from the keys or forced by ``format`` (or ``reading_as``). Always loaded with
    ``weights_only=True``; every error is one line naming the file."""
    path = Path(path)
    if format in (None, "auto") and path.is_file():
        format = _FORCED_FORMATS.get().get(path.resolve())
    return read_checkpoint(path, format)


def save_json(data: Any, path: str | os.PathLike) -> Path:
    def write(temp: str) -> None:
        with open(temp, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
    return atomic_write(path, write)


def save_npy(array: np.ndarray, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda temp: write_through(temp, lambda file: np.save(file, array)))


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    return atomic_write(path, lambda temp: write_through(temp, lambda file: np.savez(file, **arrays)))


def backbone_from_checkpoint(path: str | os.PathLike, random_init: bool = False,
                             format: str | None = None) -> tuple[Backbone, PretrainConfig]:
    """The backbone (eval mode) a checkpoint of any known layout describes, and its config.

    With ``random_init`` the same architecture is built but keeps its seeded initial weights, the
    baseline every benchmark reports beside the trained network. Weights holding NaN or inf are
    refused with the file and the first such tensor named.
    """
    state = load_checkpoint(path, format)
    config = PretrainConfig.from_dict(state["config"], source=str(path))
    torch.manual_seed(config.seed)
    if random_init:
        return build_backbone(config.arch, config.sobel).eval(), config
    backbone = backbone_from_state(config.arch, config.sobel, state["backbone"], str(path))
    return backbone.eval(), config
