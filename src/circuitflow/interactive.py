"""Every interactive figure of the workflow in one folder that opens offline: a page per figure,
an index page, and plotly.js once for all of them.

Stages save their interactive figures as plotly JSON (``circuitflow.outputs.save_interactive``).
Embedding plotly.js (about 4.6 MB) in every page made the report over 100 MB, and Chromium shows
no page embedded in a single-file report beyond its 2 MB limit on data: URLs. This folder is one
report item, its index, so ``snakemake --report report.zip`` stores plotly.js once and every page
opens from the unpacked zip, as it does from ``results/interactive/index.html``.

A page's path mirrors its figure's under the folder's parent (``results/``):
``tinysql/cs1/eap/ENGTABLENAME/sankey.html`` draws ``results/tinysql/cs1/eap/ENGTABLENAME/
sankey.plotly.json``. The index groups pages by their first two folders (model, dataset).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from circuitflow.errors import JsonFileError
from circuitflow.json_files import read_json
from circuitflow.outputs import atomic_path
from circuitflow.stage import Stage

PLOTLY_JS = "plotly.min.js"
SUFFIX = ".plotly.json"


def read_figure(path: str | Path) -> go.Figure:
    try:
        return go.Figure(read_json(path))
    except ValueError as e:
        raise JsonFileError(
            f"{path}: not a plotly figure ({str(e).splitlines()[0]}); delete it and run the "
            "workflow again to rebuild it"
        ) from e


def page_path(figure: str | Path, root: Path) -> Path:
    """Where ``figure``'s page goes, relative to the folder: its path under ``root``."""
    relative = Path(os.path.relpath(figure, root))
    if relative.parts[0] == ".." or not relative.name.endswith(SUFFIX):
        raise ValueError(f"{figure}: expected a *{SUFFIX} file under {root}")
    return relative.with_name(relative.name[: -len(SUFFIX)] + ".html")


def title_text(figure: go.Figure) -> str:
    """The first line of the figure's title, as plain text."""
    title = figure.layout.title.text or "(untitled figure)"
    return title.split("<br>")[0]


def index_html(pages: list[tuple[Path, str]]) -> str:
    groups: dict[str, list[tuple[Path, str]]] = {}
    for page, title in pages:
        groups.setdefault(" / ".join(page.parts[:2]), []).append((page, title))
    sections = []
    for group, members in groups.items():
        links = "\n".join(
            f'<li><a href="{html.escape(page.as_posix())}">{html.escape(title)}</a> '
            f"<small>({html.escape(page.as_posix())})</small></li>"
            for page, title in members
        )
        sections.append(f"<h2>{html.escape(group)}</h2>\n<ul>\n{links}\n</ul>")
    body = "\n".join(sections) or "<p>This run made no interactive figures.</p>"
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        "<title>circuitflow: interactive figures</title></head>\n<body>\n"
        f"<h1>Interactive figures ({len(pages)})</h1>\n"
        "<p>Hover for values; each figure's static version in the report has its caption.</p>\n"
        f"{body}\n</body></html>\n"
    )


def run_stage(params: dict, figures: list[str], out: str) -> None:
    root = Path(out).parent
    pages = []
    with atomic_path(out, directory=True) as tmp:
        (tmp / PLOTLY_JS).write_text(get_plotlyjs(), encoding="utf-8")
        for figure_path in figures:
            figure = read_figure(figure_path)
            page = page_path(figure_path, root)
            (tmp / page).parent.mkdir(parents=True, exist_ok=True)
            script = Path(os.path.relpath(tmp / PLOTLY_JS, (tmp / page).parent)).as_posix()
            pio.write_html(figure, tmp / page, include_plotlyjs=script, full_html=True)
            pages.append((page, title_text(figure)))
        (tmp / "index.html").write_text(index_html(pages), encoding="utf-8")


STAGE = Stage("interactive-figures", run_stage, ("figures",), ("out",), many=("figures",))
