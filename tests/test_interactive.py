"""The interactive figures folder: a page per figure, an index, plotly.js once."""

import json
import re

import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from circuitflow import interactive
from circuitflow.errors import JsonFileError
from circuitflow.outputs import save_interactive


def planted_figures(root):
    """Two figures under ``root`` (the results folder) at the depths the workflow writes them."""
    heatmap = go.Figure(go.Heatmap(z=[[1.5, 2.5]]), layout={"title": "fail % of m d<br><sub>n</sub>"})
    sankey = go.Figure(go.Scatter(x=[0, 1], y=[7.25, 8.75]), layout={"title": "EAP top edges"})
    paths = [root / "m" / "d" / "ablation_heatmaps.plotly.json",
             root / "m" / "d" / "eap" / "F" / "sankey.plotly.json"]
    for figure, path in zip((heatmap, sankey), paths):
        save_interactive(figure, path)
    return paths


def embedded_figure(page: str) -> dict:
    """The figure a page draws: the data and layout passed to Plotly.newPlot."""
    call = re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{", page, re.S)
    return {"data": json.loads(call.group(1)), "layout": json.loads(call.group(2))}


def test_every_figure_gets_a_page_that_loads_the_one_plotly_js(tmp_path):
    paths = planted_figures(tmp_path / "results")
    out = tmp_path / "results" / "interactive"
    interactive.run_stage({}, figures=[str(p) for p in paths], out=str(out))

    assert (out / "plotly.min.js").read_text() == get_plotlyjs()
    bundle_header = get_plotlyjs()[:200]
    pages = {"m/d/ablation_heatmaps.html": "../../plotly.min.js",
             "m/d/eap/F/sankey.html": "../../../../plotly.min.js"}
    for (page, script), path in zip(pages.items(), paths):
        text = (out / page).read_text()
        assert f'<script charset="utf-8" src="{script}"></script>' in text
        assert (out / page).parent.joinpath(script).resolve() == (out / "plotly.min.js").resolve()
        assert bundle_header not in text
        drawn = embedded_figure(text)
        planted = json.loads(path.read_text())
        assert drawn["data"] == planted["data"]
        assert drawn["layout"]["title"] == planted["layout"]["title"]


def test_the_index_links_every_page_under_its_model_and_dataset(tmp_path):
    paths = planted_figures(tmp_path / "results")
    out = tmp_path / "results" / "interactive"
    interactive.run_stage({}, figures=[str(p) for p in paths], out=str(out))
    index = (out / "index.html").read_text()
    assert "Interactive figures (2)" in index
    assert index.count("<h2>m / d</h2>") == 1
    assert '<a href="m/d/ablation_heatmaps.html">fail % of m d</a>' in index
    assert '<a href="m/d/eap/F/sankey.html">EAP top edges</a>' in index


def test_a_broken_figure_names_its_file_and_leaves_no_folder(tmp_path):
    paths = planted_figures(tmp_path / "results")
    paths[1].write_text('{"data": [{"type": "no-such-trace"}]}')
    out = tmp_path / "results" / "interactive"
    with pytest.raises(JsonFileError, match=f"{paths[1]}: not a plotly figure"):
        interactive.run_stage({}, figures=[str(p) for p in paths], out=str(out))
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == ["m"]
