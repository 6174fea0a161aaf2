"""The EAP plots show what the tables say: every edge, its sign as colour, |score| as width;
faithfulness against the share of edges, with the random band and MIB's areas."""

import json

import matplotlib.colors as mcolors
import matplotlib.image as mimage
import numpy as np
import pandas as pd
import plotly.io
import pytest
from matplotlib.legend import Legend
from matplotlib.patches import FancyBboxPatch, PathPatch

from circuitflow.eap import plots, sankey
from circuitflow.errors import JsonFileError
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


# Grouped-query attention: key/value inputs belong to a key/value head, not to a query head.
GQA_EDGES = pd.DataFrame({
    "upstream": ["input", "input", "l0.mlp", "l1.h0"],
    "downstream": ["l1.h0.q", "l1.kv0.k", "l1.kv0.v", "logits"],
    "score": [0.4, -0.3, 0.2, 0.6],
    "rank": [2, 3, 4, 1],
    "in_top_every_batch": [True, True, False, True],
})
# Links that skip columns, some from the bottom of a tall column, some over every column.
SKIPPING_EDGES = pd.DataFrame({
    "upstream": ["input", "l0.h5", "l0.h0", "input", "l0.h3", "l1.h3", "l0.mlp", "l0.h2",
                 "l2.h1", "l0.h4", "l0.h1"],
    "downstream": ["logits", "l2.h1.q", "l1.mlp", "l1.h2.v", "l1.h0.k", "logits", "l1.h1.q",
                   "l0.mlp", "logits", "l2.mlp", "l1.h3.q"],
    "score": [0.9, -0.5, 0.4, 0.3, -0.2, 0.7, 0.1, 0.6, 0.8, 0.35, 0.25],
    "rank": [1, 5, 6, 8, 10, 3, 11, 4, 2, 7, 9],
    "in_top_every_batch": [True] * 11,
})


def boxes_of(geometry):
    return {box.name: box for box in geometry.boxes}


def inside(box, x, y):
    """Strictly inside: a link that ends on a box's side is not in it."""
    return box.x0 < x < box.x1 and box.y0 < y < box.y1


def test_components_are_layered_from_input_to_logits():
    positions = sankey.layout(EDGES)
    column = {name: col for name, (col, _, _) in positions.items()}
    assert column["input"] == 0 and column["logits"] == max(column.values())
    assert column["l0.h1"] == column["l0.h10"] < column["l0.mlp"] < column["l1.h3"] < column["l1.mlp"]
    # A head's receivers are ports of its box, not boxes of their own.
    assert not {"l1.h3.q", "l1.h3.k"} & set(positions)
    # Heads in numeric, not string, order.
    assert positions["l0.h1"][1] < positions["l0.h10"][1]
    # Grouped-query attention: a key/value head's box follows the layer's heads, in their column.
    gqa = sankey.layout(GQA_EDGES)
    assert gqa["l1.kv0"][0] == gqa["l1.h0"][0] and gqa["l1.kv0"][1] > gqa["l1.h0"][1]
    assert sankey.node_position("l1.h7.q") < sankey.node_position("l1.kv0.k") < sankey.node_position("l1.mlp")
    with pytest.raises(ValueError, match="not a node name"):
        sankey.node_position("blocks.0.attn")


@pytest.mark.parametrize("edges", [EDGES, EDGES[EDGES["upstream"] != "l1.h3"]],
                         ids=["head writes", "head only reads"])
def test_edges_into_a_head_end_at_its_ports(edges):
    geometry = sankey.sankey_geometry(edges)
    boxes = boxes_of(geometry)
    # The head is one box, drawn even when it writes no top edge.
    assert "l1.h3" in boxes and not {"l1.h3.q", "l1.h3.k"} & set(boxes)
    ports = {port.receiver: port for port in geometry.ports}
    assert set(ports) == {"l1.h3.q", "l1.h3.k"}
    head = boxes["l1.h3"]
    q, k = ports["l1.h3.q"], ports["l1.h3.k"]
    assert (q.box, q.kind, k.kind) == ("l1.h3", "q", "k")
    assert q.x == k.x == head.x0 and head.y0 < k.y < q.y < head.y1  # left side, q above k
    assert q.description == "l1.h3.q: query input of head l1.h3"
    links = {link.name: link for link in geometry.links}
    into_q = links["l0.h1 → l1.h3.q"].points()
    assert into_q[-1] == (q.x, q.y)
    upstream = boxes["l0.h1"]
    assert into_q[0] == (upstream.x1, upstream.centre[1])  # leaves from its box's right side
    # An edge into an MLP ends on the middle of the box's left side.
    mlp = boxes["l0.mlp"]
    assert links["input → l0.mlp"].points()[-1] == (mlp.x0, mlp.centre[1])


def test_grouped_key_value_inputs_are_ports_of_their_key_value_head():
    geometry = sankey.sankey_geometry(GQA_EDGES)
    boxes = boxes_of(geometry)
    ports = {port.receiver: port for port in geometry.ports}
    assert {p.box for p in geometry.ports} == {"l1.h0", "l1.kv0"}
    assert (ports["l1.kv0.k"].box, ports["l1.kv0.v"].box) == ("l1.kv0", "l1.kv0")
    assert ports["l1.kv0.v"].description == "l1.kv0.v: value input of key/value head l1.kv0"
    assert "grouped-query attention" in boxes["l1.kv0"].description
    assert geometry.has_kv_heads and not sankey.sankey_geometry(EDGES).has_kv_heads
    link = next(li for li in geometry.links if li.downstream == "l1.kv0.v")
    assert link.points()[-1] == (ports["l1.kv0.v"].x, ports["l1.kv0.v"].y)


def test_no_link_passes_through_a_box():
    geometry = sankey.sankey_geometry(SKIPPING_EDGES)
    boxes = boxes_of(geometry)
    columns = {name: box.column for name, box in boxes.items()}
    skipping = [li for li in geometry.links
                if columns[sankey.box_name(li.downstream)] - columns[sankey.box_name(li.upstream)] > 1]
    assert len(skipping) == 9
    for link in geometry.links:
        own = {sankey.box_name(link.upstream), sankey.box_name(link.downstream)}
        for x, y in link.points(per_segment=200):
            crossed = [b.name for b in geometry.boxes if b.name not in own and inside(b, x, y)]
            assert not crossed, f"{link.name} passes through {crossed} at ({x:.2f}, {y:.2f})"
    # The check would catch a link drawn straight from input to logits: it crosses boxes.
    ends = next(li for li in skipping if li.name == "input → logits").points()
    (x0, y0), (x1, y1) = ends[0], ends[-1]
    chord = [(x0 + t / 100 * (x1 - x0), y0 + t / 100 * (y1 - y0)) for t in range(101)]
    between = [b for b in geometry.boxes if b.name not in ("input", "logits")]
    assert any(inside(b, x, y) for b in between for x, y in chord)
    # Links running over a common column keep apart.
    lanes = [(columns[sankey.box_name(li.upstream)], columns[sankey.box_name(li.downstream)],
              li.segments[1][0][1]) for li in skipping]
    for i, (a0, a1, lane_a) in enumerate(lanes):
        for b0, b1, lane_b in lanes[i + 1:]:
            if a0 + 1 <= b1 - 1 and b0 + 1 <= a1 - 1:
                assert abs(lane_a - lane_b) >= sankey.LANE_SPACING - 1e-9


def test_link_width_is_proportional_to_score_with_a_key():
    geometry = sankey.sankey_geometry(EDGES)
    per_score = sankey.MAX_LINK_WIDTH / EDGES["score"].abs().max()
    assert [li.width for li in geometry.links] == pytest.approx(list(EDGES["score"].abs() * per_score))
    scores, widths = zip(*geometry.scale)
    assert scores == pytest.approx((0.2, 0.5, 1.0))
    assert widths == pytest.approx((0.2 * per_score, 0.5 * per_score, per_score))
    assert sankey.reference_scores(0.3) == pytest.approx([0.05, 0.1, 0.2])
    assert sankey.reference_scores(4.0) == pytest.approx([0.5, 1, 2])
    keys = {t.name: t.line.width for t in sankey.sankey_figure(EDGES, "t").data
            if t.name and t.name.startswith("|score|")}
    assert keys == pytest.approx({"|score| 0.2": 0.2 * per_score, "|score| 0.5": 0.5 * per_score,
                                  "|score| 1": per_score})
    (png_key,) = [lg for lg in legends(sankey.sankey_png_figure(EDGES, "t")) if lg.get_title().get_text()]
    assert png_key.get_title().get_text() == "link width ∝ |score|"
    assert {t.get_text(): h.get_linewidth()
            for t, h in zip(png_key.get_texts(), png_key.legend_handles)} == pytest.approx(keys)


def legends(fig):
    return [c for c in fig.axes[0].get_children() if isinstance(c, Legend)]


def legend_text(fig):
    """Every legend entry of a matplotlib figure, on one line."""
    return " | ".join(t.get_text().replace("\n", " ") for lg in legends(fig) for t in lg.get_texts())


def plotly_links(fig):
    return [t for t in fig.data if t.name and "→" in t.name]


def test_both_renderers_draw_the_same_boxes_ports_and_links():
    geometry = sankey.sankey_geometry(GQA_EDGES)
    interactive = sankey.sankey_figure(GQA_EDGES, "t")
    static = sankey.sankey_png_figure(GQA_EDGES, "t").axes[0]
    expected = {b.name: (b.x0, b.y0, b.x1, b.y1) for b in geometry.boxes}
    assert len(expected) == 5
    assert {s.name: (s.x0, s.y0, s.x1, s.y1) for s in interactive.layout.shapes} == expected
    patches = [p for p in static.patches if isinstance(p, FancyBboxPatch)]
    drawn = {p.get_gid(): (p.get_x(), p.get_y(), p.get_x() + p.get_width(),
                           p.get_y() + p.get_height()) for p in patches}
    assert drawn.keys() == expected.keys()
    assert all(drawn[name] == pytest.approx(box) for name, box in expected.items())
    ends = {li.name: (li.points()[0], li.points()[-1]) for li in geometry.links}
    assert {t.name: ((t.x[0], t.y[0]), (t.x[-1], t.y[-1])) for t in plotly_links(interactive)} == ends
    curves = [p for p in static.patches if isinstance(p, PathPatch)]
    assert {c.get_gid(): (tuple(c.get_path().vertices[0]), tuple(c.get_path().vertices[-1]))
            for c in curves} == ends
    ports = sorted((p.x, p.y) for p in geometry.ports)
    (port_trace,) = [t for t in interactive.data if t.name == "ports"]
    assert sorted(zip(port_trace.x, port_trace.y)) == ports
    (port_marks,) = [line for line in static.get_lines() if line.get_gid() == "ports"]
    assert sorted(zip(port_marks.get_xdata(), port_marks.get_ydata())) == ports


def test_sankey_figure_shows_every_edge_with_its_details():
    fig = sankey.sankey_figure(EDGES, "EAP top edges: m / cs1 / ENGTABLENAME")
    links = plotly_links(fig)
    assert len(links) == len(EDGES)
    for trace, edge in zip(links, EDGES.itertuples()):
        assert trace.name == f"{edge.upstream} → {edge.downstream}"
        assert trace.line.color == (sankey.POSITIVE if edge.score > 0 else sankey.NEGATIVE)
        assert (trace.line.dash == "solid") == edge.in_top_every_batch
        assert f"score {edge.score:.4g} (rank {edge.rank})" in trace.hovertemplate
        every = "yes" if edge.in_top_every_batch else "no"
        assert f"in the top edges of every batch: {every}" in trace.hovertemplate
    (ports,) = [t for t in fig.data if t.name == "ports"]
    assert list(ports.hovertext) == ["l1.h3.q: query input of head l1.h3",
                                     "l1.h3.k: key input of head l1.h3"]
    assert list(ports.text) == ["q", "k"]
    (components,) = [t for t in fig.data if t.name == "components"]
    assert "l0.mlp: MLP of layer 0" in components.hovertext
    legend = [t.name.replace("<br>", " ") for t in fig.data if t.showlegend is not False]
    assert legend[:3] == [sankey.POSITIVE_NOTE, sankey.NEGATIVE_NOTE, sankey.DASHED_NOTE]
    assert "q, k, v marks" in legend[3] and len(legend) == 4  # no key/value heads to explain
    assert "ENGTABLENAME" in fig.layout.title.text and "6 edges between 7 components" in fig.layout.title.text
    assert "l1.h3.q" in fig.to_json()


def test_sankey_png_draws_every_edge_by_sign_and_style():
    fig = sankey.sankey_png_figure(EDGES, "EAP top edges: m / cs1 / ENGTABLENAME")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert {b.name for b in sankey.sankey_geometry(EDGES).boxes} | {"q", "k"} == set(texts)
    assert "m / cs1 / ENGTABLENAME" in ax.get_title() and "6 edges between 7 components" in ax.get_title()
    meaning = legend_text(fig)
    assert sankey.POSITIVE_NOTE in meaning and sankey.NEGATIVE_NOTE in meaning
    assert sankey.DASHED_NOTE in meaning and "q, k, v marks" in meaning
    assert "key/value head" not in meaning
    curves = [p for p in ax.patches if isinstance(p, PathPatch)]
    assert len(curves) == len(EDGES)
    for curve, edge in zip(curves, EDGES.itertuples()):
        assert mcolors.to_hex(curve.get_edgecolor()) == (sankey.POSITIVE if edge.score > 0 else sankey.NEGATIVE)
        assert (curve.get_linestyle() == "-") == edge.in_top_every_batch
    assert "grouped-query attention" in legend_text(sankey.sankey_png_figure(GQA_EDGES, "t"))


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
    path.write_text(json.dumps({"metadata": {"n_pairs": 16}, "diagnostics": {
        "ill_conditioned": reason is not None, "reason": reason}}))


@pytest.mark.parametrize("reason", [None, "the gap is 0.03 logits"])
def test_run_stage_writes_all_three_plots(tmp_path, reason):
    EDGES.to_parquet(tmp_path / "top_edges.parquet")
    CURVE.to_parquet(tmp_path / "faithfulness.parquet")
    SUMMARY.to_parquet(tmp_path / "faithfulness_summary.parquet")
    write_results_json(tmp_path / "eap_results.json", reason)
    names = ("sankey_interactive", "sankey_png", "faithfulness_png")
    out = {name: tmp_path / name.replace("_", ".", 1) for name in names}
    plots.STAGE.run(
        Params(plots.STAGE.name, {"plots": {"dpi": 60}, "model": "tinysql", "dataset": "cs2",
                                  "feature": "ENGFIELDNAME"}),
        top_edges=str(tmp_path / "top_edges.parquet"), faithfulness=str(tmp_path / "faithfulness.parquet"),
        faithfulness_summary=str(tmp_path / "faithfulness_summary.parquet"),
        results_json=str(tmp_path / "eap_results.json"),
        **{k: str(v) for k, v in out.items()},
    )
    sankey = out["sankey_interactive"].read_text()
    assert "l1.h3.q" in sankey
    title = plotly.io.read_json(out["sankey_interactive"]).layout.title.text
    assert title.startswith("EAP top edges: tinysql / cs2 / ENGFIELDNAME (16 pairs)")
    assert ("ILL-CONDITIONED" in title) is (reason is not None)
    for png in ("sankey_png", "faithfulness_png"):
        height, width, _ = mimage.imread(out[png]).shape
        assert height > 100 and width > 100


def test_run_stage_refuses_results_without_diagnostics(tmp_path):
    EDGES.to_parquet(tmp_path / "top_edges.parquet")
    CURVE.to_parquet(tmp_path / "faithfulness.parquet")
    SUMMARY.to_parquet(tmp_path / "faithfulness_summary.parquet")
    (tmp_path / "r.json").write_text(json.dumps({"metadata": {"n_pairs": 16}}))
    names = ("sankey_interactive", "sankey_png", "faithfulness_png")
    out = {name: tmp_path / name.replace("_", ".", 1) for name in names}
    with pytest.raises(JsonFileError, match="r.json: no diagnostics block"):
        plots.STAGE.run(
            Params(plots.STAGE.name, {"plots": {"dpi": 60}, "model": "tinysql", "dataset": "cs2",
                                      "feature": "ENGFIELDNAME"}),
            top_edges=str(tmp_path / "top_edges.parquet"),
            faithfulness=str(tmp_path / "faithfulness.parquet"),
            faithfulness_summary=str(tmp_path / "faithfulness_summary.parquet"),
            results_json=str(tmp_path / "r.json"), **{k: str(v) for k, v in out.items()},
        )
    assert not any(path.exists() for path in out.values())


def test_no_edges_still_plots():
    empty = EDGES.iloc[:0]
    geometry = sankey.sankey_geometry(empty)
    assert geometry == ([], [], [], [])
    fig = sankey.sankey_figure(empty, "t")
    assert not plotly_links(fig) and "no edges" in {a.text for a in fig.layout.annotations}
    assert "no edges" in {t.get_text() for t in sankey.sankey_png_figure(empty, "t").axes[0].texts}
