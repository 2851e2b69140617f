"""Several linear-benchmark runs gathered into one Markdown table (``deepcluster results``).

Rows are the models (``deepcluster``, ``random init``, ``supervised`` ..., from each run's
``label``) on each dataset; columns the published layout, Feature1..Feature5 and AvgPool. Runs with
the same label and dataset fill one row, so a multi-head run and an AvgPool run of the same
checkpoint sit side by side, as in the published tables.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

COLUMNS = {"feature1": "Feature1", "feature2": "Feature2", "feature3": "Feature3",
           "feature4": "Feature4", "feature5": "Feature5", "avgpool": "AvgPool"}
METRICS = {"top1": "top-1", "top5": "top-5"}


@dataclass
class Row:
    label: str
    data: str
    heads: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    sources: list[str] = field(default_factory=list)


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """A run folder's ``results.json`` (or the file itself), checked to be a linear benchmark."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass run folders written by "
                                "'deepcluster benchmark linear --out DIR'")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}:{error.colno}: malformed JSON ({error.msg})") from None
    if not isinstance(results, dict) or results.get("benchmark") != "linear":
        raise ValueError(f"{path}: not a linear-benchmark result (key 'benchmark' is "
                         f"{results.get('benchmark') if isinstance(results, dict) else None!r})")
    for key in ("label", "data", "heads"):
        if key not in results:
            raise ValueError(f"{path}: missing key {key!r}")
    results["_path"] = str(path)
    return results


def gather(runs: Sequence[dict[str, Any]]) -> list[Row]:
    """One row per (label, dataset), in the order first seen; a head measured twice is an error."""
    rows: dict[tuple[str, str], Row] = {}
    for run in runs:
        row = rows.setdefault((run["label"], run["data"]), Row(run["label"], run["data"]))
        for head, metrics in run["heads"].items():
            if head in row.heads:
                raise ValueError(f"{run['_path']}: {head} of {run['label']!r} on {run['data']!r} "
                                 f"is already given by {row.sources[0]}; pass one of them, or "
                                 "relabel a run with --label")
            row.heads[head] = metrics
        row.seconds += float(run.get("seconds", {}).get("total", 0.0))
        row.sources.append(run["_path"])
    return list(rows.values())


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def markdown_table(rows: Sequence[Row], metric: str = "top1") -> str:
    """The rows in the published layout, one metric (``top1`` or ``top5``) in percent."""
    header = ["Model", "Dataset", *COLUMNS.values(), "Time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row.heads[h][metric]:.2f}" if h in row.heads else "–" for h in COLUMNS]
        lines.append("| " + " | ".join([row.label, row.data, *cells, _duration(row.seconds)]) + " |")
    return "\n".join(lines)


def render(rows: Sequence[Row], metrics: Sequence[str] = ("top1", "top5")) -> str:
    """Markdown with a titled table per metric and the source of every row."""
    parts = []
    for metric in metrics:
        parts += [f"Linear classification, {METRICS[metric]} (%):", "", markdown_table(rows, metric), ""]
    parts.append("Runs: " + "; ".join(f"{row.label} on {row.data}: " + ", ".join(row.sources)
                                       for row in rows) + ".")
    return "\n".join(parts) + "\n"
