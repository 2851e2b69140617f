"""The HTML page of a run report or a cluster explorer: one small Jinja2 template
(``templates/report.html``) filled with sections of figures, cluster cards, tables and code. The
page opens from disk: its images are PNG files beside it, it loads nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .cluster_grids import ClusterCard


@dataclass
class Figure:
    title: str
    file: str  # relative to the page
    caption: str = ""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Section:
    title: str
    anchor: str
    text: str = ""
    figures: list[Figure] = field(default_factory=list)
    cards: list[ClusterCard] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    code: str = ""


@dataclass
class Page:
    title: str
    subtitle: str = ""
    summary: list[tuple[str, str]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)


def render_page(page: Page) -> str:
    """The page's HTML (every value escaped)."""
    import jinja2

    template = resources.files("deepcluster").joinpath("templates/report.html").read_text()
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(page=page)


def write_page(page: Page, folder: str | Path) -> Path:
    """``folder/index.html``; returns its path."""
    path = Path(folder) / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(page), encoding="utf-8")
    return path
