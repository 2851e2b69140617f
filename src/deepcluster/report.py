"""Terminal output: one console for the whole tool, wide enough for the tables when piped."""

from __future__ import annotations

import sys

from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 140)
