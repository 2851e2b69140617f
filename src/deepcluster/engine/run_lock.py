"""One run per folder: a lock file that a second run writing into the same ``--out`` finds held.

The lock is an advisory ``flock`` on ``RUN/.lock``: the kernel releases it when the process dies,
kill -9 included, so a crashed run never leaves a stale lock behind (the file itself stays, with
the pid of the last holder, for the message).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..atomic import remove_stale_temps

LOCK_NAME = ".lock"


class RunLocked(RuntimeError):
    """Another process is writing into the run folder."""


class RunLock:
    """``out``'s lock, held from ``acquire()`` to ``release()`` by the process that writes."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.handle = None

    def acquire(self) -> str | None:
        """Take the lock and remove the temporary files an earlier, killed run left; returns
        None, or why the lock is not free."""
        self.out.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return (f"{self.out} is in use by another run ({holder(self.path)} holds "
                    f"{self.path}); wait for it to finish or pass another --out")
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        for folder in (self.out, self.out / "checkpoints", self.out / "assignments"):
            remove_stale_temps(folder)
        return None

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file releases the lock
            self.handle = None


def holder(lock: Path) -> str:
    """The pid written in ``lock``, as words."""
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid else "another process"
