"""Resume rules: which checkpoint a run continues from, with which config, and what may change.

A resumed run starts from its checkpoint's own config and run folder; only the fields marked
``resume`` in the config may be given again (workers, threads, devices, epochs, ...). A schedule
planned over the number of epochs ("cosine", "cosine-epoch") keeps its plan: changing ``epochs``
would change the learning rate of the epochs still to come, so the change is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import EPOCH_DEPENDENT_SCHEDULES, PretrainConfig, resumable_fields
from .checkpoints import checkpoint_path, load_run_state, run_folder


class NothingToDo(Exception):
    """The run already has the epochs asked for."""


def find_checkpoint(resume: str | Path, out: str | Path) -> Path | None:
    """The checkpoint ``--resume`` names: a file; a run folder (its ``checkpoints/last.ckpt``);
    or ``auto``: ``out``'s last checkpoint, None when ``out`` holds none (a fresh start)."""
    if str(resume) == "auto":
        last = checkpoint_path(out)
        return last if last.is_file() else None
    path = Path(resume)
    if path.is_dir():
        last = checkpoint_path(path)
        if not last.is_file():
            raise FileNotFoundError(f"run folder {path} holds no checkpoint ({last})")
        return last
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def resumed_config(checkpoint: str | Path, changes: dict[str, Any]) -> PretrainConfig:
    """The checkpoint's config in its own run folder, with ``changes`` (resumable fields, or
    others at their saved value)."""
    _, saved = load_run_state(checkpoint)
    changes = {k: v for k, v in changes.items() if v is not None}
    # a value equal to the saved one is no change: the same command line with --resume auto
    # appended (as a requeued cluster job reruns it) continues the run
    refused = sorted(n for n in set(changes) - set(resumable_fields()) - {"out"}
                     if changes[n] != getattr(saved, n))
    if refused:
        details = ", ".join(f"{n} ({getattr(saved, n)!r} -> {changes[n]!r})" for n in refused)
        raise ValueError(f"cannot change {details} when resuming {checkpoint}: a resumed run keeps "
                         f"its recipe; only {', '.join(resumable_fields())} may change")
    folder = run_folder(checkpoint)
    if "out" in changes and Path(changes["out"]).resolve() != folder.resolve():
        raise ValueError(f"{checkpoint} belongs to the run folder {folder}; a resumed run "
                         f"continues there (got --out {changes['out']})")
    return saved.override(**{**changes, "out": str(folder)})


def check_resume(saved: PretrainConfig, config: PretrainConfig, done: int, path: str | Path) -> None:
    """Refuse a resume that would not continue the saved run: a changed recipe, a changed
    epoch-dependent schedule, or fewer epochs than done (``NothingToDo`` for as many)."""
    allowed = set(resumable_fields())
    mine, theirs = config.to_dict(), saved.to_dict()
    changed = [n for n in sorted(set(mine) | set(theirs))
               if n not in allowed and mine.get(n) != theirs.get(n)]
    if changed:
        details = ", ".join(f"{n}: {theirs.get(n)!r} -> {mine.get(n)!r}" for n in changed)
        raise ValueError(f"cannot resume from {path}: the config differs ({details})")
    if config.epochs != saved.epochs and saved.lr_schedule in EPOCH_DEPENDENT_SCHEDULES:
        raise ValueError(
            f"cannot change epochs {saved.epochs} -> {config.epochs} when resuming {path}: its "
            f"lr_schedule={saved.lr_schedule!r} was planned over {saved.epochs} epochs, and a "
            "new length would change the learning rate of the epochs still to come; start a new "
            "run to train longer")
    if config.epochs < done:
        raise ValueError(f"{path} has {done} epochs done; epochs={config.epochs} asks for fewer "
                         "(pass a larger --epochs to train on)")
    if config.epochs == done:
        raise NothingToDo(f"{run_folder(path)} already has {done} of {config.epochs} epochs; "
                          "pass a larger --epochs to train on")
