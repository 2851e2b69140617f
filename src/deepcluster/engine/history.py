"""The run's history: one row per epoch, kept in the checkpoint and written to ``metrics.csv``,
TensorBoard and the console.

``metrics.csv`` is rewritten whole (atomically) from the rows after every epoch, so that a resumed
run keeps every earlier row exactly once, whatever was interrupted; TensorBoard's events of a
resumed run start with ``purge_step`` at the first new epoch, which hides any event an
interrupted run wrote past its checkpoint.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from rich.table import Table

from ..atomic import atomic_write
from ..console import console

Row = dict[str, Any]
TITLES = {"loss": "loss", "nmi_previous": "NMI previous", "nmi_labels": "NMI labels",
          "empty_clusters": "empty clusters", "smallest_cluster": "smallest",
          "largest_cluster": "largest", "lr": "lr", "extract_s": "extract s",
          "cluster_s": "cluster s", "train_s": "train s", "knn_top1": "k-NN top-1",
          "knn_s": "k-NN s"}


def format_value(value: Any) -> str:
    """Floats to 3 decimals (small ones such as a learning rate of 1e-5 in exponent form)."""
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "-"
    return f"{value:.3f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"


def format_row(row: Row) -> str:
    """One console line for an epoch's row."""
    return f"epoch {row['epoch']}: " + " | ".join(
        f"{TITLES.get(name, name)} {format_value(value)}" for name, value in row.items()
        if name != "epoch")


def history_table(rows: list[Row], title: str) -> Table:
    table = Table(title=title)
    columns = list(rows[0]) if rows else ["epoch"]
    for name in columns:
        table.add_column(TITLES.get(name, name), justify="right")
    for row in rows:
        table.add_row(*(format_value(row.get(name, "")) for name in columns))
    return table


def csv_text(rows: list[Row]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [name for name in row if name not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_metrics_csv(path: Path, last_epoch: int) -> list[Row]:
    """The rows of an existing ``metrics.csv`` up to ``last_epoch`` (checkpoints written before the
    history was kept in them; their CSV, Lightning's, numbered the epochs in a ``step`` column)."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    history = []
    for row in rows:
        epoch = int(row.pop("epoch", None) or row.pop("step"))
        row.pop("step", None)
        if epoch <= last_epoch:
            history.append({"epoch": epoch, **{k: parse_number(v) for k, v in row.items()}})
    return history


def parse_number(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


class History:
    """The rows of a run; ``add`` writes them where they go (rank 0 only: ``writer=True``)."""

    def __init__(self, out: Path, rows: list[Row], writer: bool, show: bool = True):
        self.out, self.rows, self.writer, self.show = out, list(rows), writer, show
        self._tensorboard = None

    def add(self, row: Row) -> None:
        self.rows.append(row)
        if not self.writer:
            return
        self.rewrite()
        self.tensorboard(first_epoch=row["epoch"])
        for name, value in row.items():
            if name != "epoch" and isinstance(value, (int, float)):
                self._tensorboard.add_scalar(name, value, global_step=row["epoch"])
        self._tensorboard.flush()
        if self.show:
            console.print(format_row(row))

    def rewrite(self) -> None:
        """``metrics.csv`` from the rows alone (a resumed run's first act)."""
        if self.writer and self.rows:
            atomic_write(self.out / "metrics.csv",
                         lambda temp: Path(temp).write_text(csv_text(self.rows)))

    def tensorboard(self, first_epoch: int):
        if self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter  # loads TensorBoard only when used

            self._tensorboard = SummaryWriter(str(self.out / "tensorboard"), purge_step=first_epoch)
        return self._tensorboard

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
