"""Files written atomically: into a temporary file beside the target, then renamed onto it, so a
crash, a kill or a full disk never leaves half a file where a reader looks.

A full disk is reported as one line naming the file (torch's own error for it is a C++ assertion
that mentions neither), and the file keeps the permissions the umask gives, as any other tool's.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

TEMP_SUFFIX = ".tmp"


class WriteError(OSError):
    """A file could not be written; the message names it and the system's reason."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temp_path)`` then rename onto ``path``. On any failure the temporary file is
    removed and ``path`` keeps its previous content."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as error:
        raise WriteError(error.errno, f"cannot write {path}: {error.strerror}") from error
    os.close(handle)
    try:
        write(temp)
        os.chmod(temp, 0o666 & ~current_umask())  # mkstemp's 0600 is for secrets, not results
        os.replace(temp, path)
    except OSError as error:
        _remove(temp)
        raise WriteError(error.errno, f"cannot write {path}: {error.strerror or error}") from error
    except BaseException:
        _remove(temp)
        raise
    return path


def write_through(temp: str, save: Callable[[BinaryIO], None]) -> None:
    """``save(file)`` into ``temp``, re-raising the OSError of a failed write (a full disk) where
    the library doing the writing (torch) turns it into a bare RuntimeError."""
    with open(temp, "wb") as raw:
        recorder = _RecordingWriter(raw)
        try:
            save(recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed writer left in ``folder`` (``.NAME.XXXX.tmp``); only
    call it while no other process writes there (the run's lock is held)."""
    folder = Path(folder)
    stale = sorted(folder.glob(f".*{TEMP_SUFFIX}")) if folder.is_dir() else []
    for temp in stale:
        _remove(str(temp))
    return stale


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _RecordingWriter:
    """A binary file that remembers the OSError of its last failed write."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.error = raw, None

    def write(self, data) -> int:
        try:
            return self.raw.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        try:
            self.raw.flush()
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name):
        return getattr(self.raw, name)


def _remove(temp: str) -> None:
    try:
        os.remove(temp)
    except FileNotFoundError:
        pass
