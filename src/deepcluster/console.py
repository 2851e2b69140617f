"""Terminal output: one console for the whole tool, wide enough for the tables when piped."""

from __future__ import annotations

import sys

from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 140)


def progress_bar(iterable, desc: str, enabled: bool = True, **kwargs):
    """A tqdm bar on stderr; in a log file (not a terminal) it updates every 30 s, not every step."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, leave=False, disable=not enabled, dynamic_ncols=interactive,
                mininterval=0.1 if interactive else 30.0, **kwargs)
