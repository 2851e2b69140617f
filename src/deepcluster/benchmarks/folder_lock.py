"""A benchmark's output folder, one run at a time: ``locked_folder(out)`` holds ``OUT/.lock``
(``engine.run_lock``: released by the kernel when the process dies, kill -9 included) for the
length of the run, so that a second run into the same folder stops with a one-line error instead
of interleaving its writes, and clears the temporary files a killed run's writes left behind."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..atomic import remove_stale_temps
from ..engine.run_lock import RunLock, RunLocked


@contextmanager
def locked_folder(out: str | os.PathLike, also: Iterable[str | os.PathLike] = ()
                  ) -> Iterator[Path]:
    """Hold ``out``'s lock; on taking it, remove the stale temporary files of ``out`` and of the
    folders ``also`` (which only runs holding this lock write to). RunLocked when it is held."""
    lock = RunLock(out)
    refused = lock.acquire()
    if refused:
        raise RunLocked(refused)
    try:
        for folder in also:
            remove_stale_temps(folder)
        yield Path(out)
    finally:
        lock.release()
