"""The EAP plots show what the tables say: every edge, its sign as colour, |score| as width;
faithfulness against the share of edges, with the random band and MIB's areas."""

import json

import matplotlib.colors as mcolors
import matplotlib.image as mimage
import numpy as np
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
TOTAL = 2000


def curve_rows(circuit, draw, n_edges, f):
    return pd.DataFrame({
        "circuit": circuit, "draw": draw, "n_edges_in_circuit": n_edges,
        "n_edges_total": TOTAL, "faithfulness": f,
    })


# EAP's circuits (the 20-edge circuit asked for twice: a configured size and 1 % of the edges)
# and two random draws, out of order as a table may hold them.
CURVE = pd.concat([
    curve_rows("eap", None, [20, 0, 2, 20, 200, 2000], [0.6, 0.0, 0.3, 0.6, 0.9, 1.0]),
    curve_rows("random", 0, [2, 20, 200, 2000], [0.0, 0.1, 0.3, 1.0]),
    curve_rows("random", 1, [2, 20, 200, 2000], [0.1, 0.0, 0.5, 1.0]),
], ignore_index=True).astype({"draw": "Int64"})
SUMMARY = pd.DataFrame({
    "circuit": ["eap", "random"], "ranking": ["absolute", None], "n_curves": [1, 2],
    "cpr": [0.8123, 0.4], "cmd": [0.2345, 0.6], "cpr_std": [np.nan, 0.05], "cmd_std": [np.nan, 0.07],
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
    fig = plots.faithfulness_figure(CURVE, SUMMARY, "Circuit faithfulness: m / cs1 / DEFFIELDNAME")
    ax = fig.axes[0]
    curve, random_mean, *references = ax.get_lines()
    assert list(curve.get_xdata()) == pytest.approx([0, 0.1, 1, 10, 100])  # % of 2000 edges
    assert list(curve.get_ydata()) == [0.0, 0.3, 0.6, 0.9, 1.0]
    assert list(random_mean.get_ydata()) == pytest.approx([0.05, 0.05, 0.4, 1.0])
    assert sorted(line.get_ydata()[0] for line in references) == [0, 1]
    # The band spans the draws' range at every size.
    (band,) = ax.collections
    vertices = band.get_paths()[0].vertices
    for x, low, high in zip([0.1, 1, 10, 100], [0.0, 0.0, 0.3, 1.0], [0.1, 0.1, 0.5, 1.0]):
        at_x = vertices[np.isclose(vertices[:, 0], x), 1]
        assert at_x.min() == pytest.approx(low) and at_x.max() == pytest.approx(high)
    assert ax.get_xscale() == "symlog" and ax.xaxis.get_transform().linthresh == pytest.approx(0.1)
    assert "faithfulness" in ax.get_ylabel() and "% of the graph's edges" in ax.get_xlabel()
    assert "DEFFIELDNAME" in ax.get_title() and "2,000 edges" in ax.get_title()
    legend = " | ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "|score|: CPR 0.812, CMD 0.234" in legend
    assert "range of 2 draws: CPR 0.400 ± 0.050, CMD 0.600 ± 0.070" in legend
    assert not fig.texts


def test_faithfulness_figure_says_when_the_run_is_ill_conditioned():
    signed = SUMMARY.assign(ranking=["signed", None])
    fig = plots.faithfulness_figure(CURVE, signed, "t", warning="the gap is 0.03 logits")
    (text,) = fig.texts
    assert "Ill-conditioned" in text.get_text() and "the gap is 0.03 logits" in text.get_text()
    assert "signed score" in " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_faithfulness_figure_without_random_circuits():
    fig = plots.faithfulness_figure(CURVE[CURVE["circuit"] == "eap"], SUMMARY.iloc[:1], "t")
    assert not fig.axes[0].collections and len(fig.axes[0].get_lines()) == 3


def write_results_json(path, reason):
    path.write_text(json.dumps({"diagnostics": {"ill_conditioned": reason is not None,
                                                "reason": reason}}))


@pytest.mark.parametrize("reason", [None, "the gap is 0.03 logits"])
def test_run_stage_writes_all_three_plots(tmp_path, reason):
    EDGES.to_parquet(tmp_path / "top_edges.parquet")
    CURVE.to_parquet(tmp_path / "faithfulness.parquet")
    SUMMARY.to_parquet(tmp_path / "faithfulness_summary.parquet")
    write_results_json(tmp_path / "eap_results.json", reason)
    names = ("sankey_html", "sankey_png", "faithfulness_png")
    out = {name: tmp_path / name.replace("_", ".", 1) for name in names}
    plots.STAGE.run(
        Params(plots.STAGE.name, {"plots": {"dpi": 60}, "model": "tinysql", "dataset": "cs2",
                                  "feature": "ENGFIELDNAME"}),
        top_edges=str(tmp_path / "top_edges.parquet"), faithfulness=str(tmp_path / "faithfulness.parquet"),
        faithfulness_summary=str(tmp_path / "faithfulness_summary.parquet"),
        results_json=str(tmp_path / "eap_results.json"),
        **{k: str(v) for k, v in out.items()},
    )
    html = out["sankey_html"].read_text()
    assert '"type":"sankey"' in html and "l1.h3.q" in html
    assert "tinysql \\u002f cs2 \\u002f ENGFIELDNAME" in html  # plotly escapes the slashes
    assert ("ILL-CONDITIONED" in html) is (reason is not None)
    for png in ("sankey_png", "faithfulness_png"):
        height, width, _ = mimage.imread(out[png]).shape
        assert height > 100 and width > 100


def test_run_stage_refuses_results_without_diagnostics(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(plots.JsonFileError, match="no diagnostics block"):
        plots.ill_conditioned_reason(str(tmp_path / "r.json"))


def test_no_edges_still_plots(tmp_path):
    empty = EDGES.iloc[:0]
    assert len(plots.sankey_figure(empty, "t").data[0].link.source or []) == 0
    assert "no edges" in {t.get_text() for t in plots.sankey_png_figure(empty, "t").axes[0].texts}
