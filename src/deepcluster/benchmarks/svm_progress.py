"""What a ``benchmark svm`` or ``benchmark lowshot`` command under way has finished:
``OUT/progress.json``, so that a killed command given again continues where it stopped.

``results.json`` only ever holds finished runs; this file holds the parts finished since the
command started, per run (``svm/deepcluster``, ``lowshot/random init``, ...): the SVM result of
each layer, the low-shot result of each (layer, k), and the layers whose features the command
extracted (recorded before the extraction, so a kill during it loses nothing of the record).
Each part is written (atomically) as soon as it is done. A rerun on the same checkpoint, images
and settings reads them back instead of computing them again; every part being a deterministic
function of those, it writes the results file an uninterrupted run writes. The file goes when
the command finishes. One of another checkpoint, dataset or settings is no use to the rerun and
is replaced, as the results file is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from ..checkpoint import save_json

PROGRESS_FILE = "progress.json"


class Progress:
    """The finished parts of the runs of one command, keyed ``COMMAND/RUN``, for the results
    ``identity`` (checkpoint, images, image size, classes)."""

    def __init__(self, out: str | os.PathLike, identity: dict[str, Any]):
        self.path = Path(out) / PROGRESS_FILE
        self.identity = json.loads(json.dumps(identity))  # as it reads back from the file
        self.entries = self._read()

    def _read(self) -> dict[str, Any]:
        try:
            stored = json.loads(self.path.read_text())
        except (OSError, ValueError):  # absent, or not this tool's (its writes are atomic)
            return {}
        if not isinstance(stored, dict) or stored.get("identity") != self.identity:
            return {}
        entries = stored.get("entries")
        return entries if isinstance(entries, dict) else {}

    def start(self, key: str, settings: dict[str, Any]) -> None:
        """Begin (or continue) the run ``key`` with ``settings`` (costs, seed, ...): its finished
        parts are kept only if they were made with the same settings."""
        settings = json.loads(json.dumps(settings))
        entry = self.entries.get(key)
        if not isinstance(entry, dict) or entry.get("settings") != settings:
            self.entries[key] = {"settings": settings, "features_extracted": [], "parts": {}}

    def part(self, key: str, name: str) -> Any | None:
        """The finished part ``name`` of run ``key`` (None: still to do)."""
        return self.entries[key]["parts"].get(name)

    def done(self, key: str, name: str, value: Any) -> None:
        self.entries[key]["parts"][name] = value
        self.save()

    def extracting(self, key: str, layers: Sequence[str]) -> None:
        """Record, before extracting them, the layers whose features run ``key`` extracts."""
        entry = self.entries[key]
        entry["features_extracted"] = sorted(set(entry["features_extracted"]) | set(layers))
        self.save()

    def extracted(self, key: str) -> list[str]:
        """Every layer run ``key`` extracted, in this process or in a killed one before it."""
        return list(self.entries[key]["features_extracted"])

    def save(self) -> None:
        save_json({"identity": self.identity, "entries": self.entries}, self.path)

    def finish(self, command: str) -> None:
        """``command`` is done (its results written): its runs have nothing left to continue;
        the file goes with the last entry."""
        self.entries = {k: v for k, v in self.entries.items() if not k.startswith(f"{command}/")}
        if self.entries:
            self.save()
        else:
            self.path.unlink(missing_ok=True)
