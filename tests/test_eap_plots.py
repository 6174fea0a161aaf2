"""The EAP plots show what the tables say: every edge, its sign as colour, |score| as width."""

import matplotlib.colors as mcolors
import matplotlib.image as mimage
import pandas as pd
import pytest
from matplotlib.patches import PathPatch

from circuitflow.eap import plots
from circuitflow.stage import Params

EDGES = pd.DataFrame({
    "upstream": ["input", "l0.h1", "l0.mlp", "l1.h3", "l0.h10", "input"],
    "downstream": ["l0.mlp", "l1.h3.q", "logits", "logits", "l1.mlp", "l1.h3.k"],
    "score": [0.5, -0.2, 1.0, 0.3, -0.05, 0.1],
    "rank": [2, 4, 1, 3, 6, 5],
    "n_batches_in_top": [2, 2, 2, 1, 2, 1],
    "in_top_every_batch": [True, True, True, False, True, False],
})
CURVE = pd.DataFrame({
    "circuit_size": [10, 0, 1, 2, 5, 100],
    "n_edges_in_circuit": [10, 0, 1, 2, 5, 100],
    "metric": [2.7, 0.0, 0.6, 1.2, 2.1, 3.0],
    "faithfulness": [0.9, 0.0, 0.2, 0.4, 0.7, 1.0],
})


def test_nodes_are_layered_from_input_to_logits():
    positions = plots.layout(EDGES)
    column = {name: col for name, (col, _, _) in positions.items()}
    assert column["input"] == 0 and column["logits"] == max(column.values())
    assert column["l0.h1"] == column["l0.h10"] < column["l0.mlp"] < column["l1.h3"] < column["l1.mlp"]
    # A receiver sits in its head's column, after the head's output, in q, k, v order.
    assert column["l1.h3.q"] == column["l1.h3.k"] == column["l1.h3"]
    assert positions["l1.h3"][1] < positions["l1.h3.q"][1] < positions["l1.h3.k"][1]
    # Heads in numeric, not string, order.
    assert positions["l0.h1"][1] < positions["l0.h10"][1]
    # Grouped-query attention: shared key/value receivers follow the layer's heads.
    assert plots.node_position("l1.h7.q") < plots.node_position("l1.kv0.k") < plots.node_position("l1.mlp")
    with pytest.raises(ValueError, match="not a node name"):
        plots.node_position("blocks.0.attn")


def test_sankey_links_match_edges():
    fig = plots.sankey_figure(EDGES, "EAP top edges: m / cs1 / ENGTABLENAME")
    sankey = fig.data[0]
    names = list(sankey.node.label)
    links = list(zip(sankey.link.source, sankey.link.target, sankey.link.value, sankey.link.color))
    assert len(links) == len(EDGES)
    for (source, target, value, color), edge in zip(links, EDGES.itertuples()):
        assert (names[source], names[target]) == (edge.upstream, edge.downstream)
        assert value == pytest.approx(abs(edge.score))
        assert color == (plots.POSITIVE if edge.score > 0 else plots.NEGATIVE)
    x = dict(zip(names, sankey.node.x))
    assert x["input"] < x["l0.h1"] < x["l0.mlp"] < x["l1.h3"] == x["l1.h3.q"] < x["l1.mlp"] < x["logits"]
    assert all(0 < v < 1 for v in sankey.node.x + sankey.node.y)
    assert "ENGTABLENAME" in fig.layout.title.text


def test_sankey_png_draws_every_edge_by_sign_and_size():
    fig = plots.sankey_png_figure(EDGES, "EAP top edges: m / cs1 / ENGTABLENAME")
    ax = fig.axes[0]
    texts = {t.get_text() for t in ax.texts}
    assert set(EDGES["upstream"]) | set(EDGES["downstream"]) <= texts
    assert "m / cs1 / ENGTABLENAME" in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("positive" in t for t in legend) and any("negative" in t for t in legend)
    curves = [p for p in ax.patches if isinstance(p, PathPatch)]
    assert len(curves) == len(EDGES)
    blue, red = mcolors.to_rgb("tab:blue"), mcolors.to_rgb("tab:red")
    for curve, edge in zip(curves, EDGES.itertuples()):
        assert mcolors.to_rgb(curve.get_edgecolor()) == (blue if edge.score > 0 else red)
        assert (curve.get_linestyle() == "-") == edge.in_top_every_batch
    widths = [c.get_linewidth() for c in curves]
    order = EDGES["score"].abs().argsort().tolist()
    assert [widths[i] for i in order] == sorted(widths)


def test_faithfulness_curve():
    fig = plots.faithfulness_figure(CURVE, "Circuit faithfulness: m / cs1 / DEFFIELDNAME")
    ax = fig.axes[0]
    curve, *references = ax.get_lines()
    assert list(curve.get_xdata()) == [0, 1, 2, 5, 10, 100]
    assert list(curve.get_ydata()) == [0.0, 0.2, 0.4, 0.7, 0.9, 1.0]
    assert sorted(line.get_ydata()[0] for line in references) == [0, 1]
    assert ax.get_xscale() == "symlog"
    assert "faithfulness" in ax.get_ylabel() and "k" in ax.get_xlabel()
    assert "DEFFIELDNAME" in ax.get_title()


def test_run_stage_writes_all_three_plots(tmp_path):
    EDGES.to_parquet(tmp_path / "top_edges.parquet")
    CURVE.to_parquet(tmp_path / "faithfulness.parquet")
    names = ("sankey_html", "sankey_png", "faithfulness_png")
    out = {name: tmp_path / name.replace("_", ".", 1) for name in names}
    plots.STAGE.run(
        Params(plots.STAGE.name, {"plots": {"dpi": 60}, "model": "tinysql", "dataset": "cs2",
                                  "feature": "ENGFIELDNAME"}),
        top_edges=str(tmp_path / "top_edges.parquet"), faithfulness=str(tmp_path / "faithfulness.parquet"),
        **{k: str(v) for k, v in out.items()},
    )
    html = out["sankey_html"].read_text()
    assert '"type":"sankey"' in html and "l1.h3.q" in html
    assert "tinysql \\u002f cs2 \\u002f ENGFIELDNAME" in html  # plotly escapes the slashes
    for png in ("sankey_png", "faithfulness_png"):
        height, width, _ = mimage.imread(out[png]).shape
        assert height > 100 and width > 100


def test_no_edges_still_plots(tmp_path):
    empty = EDGES.iloc[:0]
    assert len(plots.sankey_figure(empty, "t").data[0].link.source or []) == 0
    assert "no edges" in {t.get_text() for t in plots.sankey_png_figure(empty, "t").axes[0].texts}
