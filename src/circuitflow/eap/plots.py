"""Plots of an EAP run: a Sankey diagram of the top edges and the circuit faithfulness curve.

The Sankey is drawn twice: interactive HTML with plotly, and a static PNG with matplotlib
(plotly's own PNG export needs a browser, which cluster nodes rarely have). Both lay nodes out in
columns by position in the forward pass, input at the left and logits at the right; a link is
blue when its score is positive (the edge carries the clean answer), red when negative, and as
wide as its |score|.
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import pandas as pd
import plotly.graph_objects as go
from matplotlib.lines import Line2D
from matplotlib.patches import FancyBboxPatch, PathPatch
from matplotlib.path import Path
from matplotlib.ticker import FuncFormatter

from circuitflow import nodes
from circuitflow.errors import JsonFileError
from circuitflow.json_files import read_json
from circuitflow.outputs import atomic_path, save_figure
from circuitflow.tables import read_table
from circuitflow.stage import Stage

POSITIVE = "rgba(31, 78, 216, 0.45)"
NEGATIVE = "rgba(214, 39, 40, 0.45)"
TOP_EDGE_COLUMNS = ["upstream", "downstream", "score", "rank", "in_top_every_batch"]
FAITHFULNESS_COLUMNS = ["circuit", "draw", "n_edges_in_circuit", "n_edges_total", "faithfulness"]
SUMMARY_COLUMNS = ["circuit", "ranking", "n_curves", "cpr", "cmd", "cpr_std", "cmd_std"]


def node_position(name: str) -> tuple[float, tuple]:
    """(column, order within the column) of a node or receiver name (``circuitflow.nodes``).

    Layer l's heads come before its MLP, which reads them; a head's receivers share the head's
    column, listed after it (shared key/value receivers after all heads).
    """
    node = nodes.parse(name)
    if node.layer is None:
        column = 0 if name == nodes.INPUT else float("inf")
    else:
        column = 2 * node.layer + (2 if node.is_mlp else 1)
    return column, nodes.sort_key(name)


def layout(edges: pd.DataFrame) -> dict[str, tuple[int, int, int]]:
    """Node -> (column index, row in its column, nodes in that column), empty columns dropped."""
    names = sorted(set(edges["upstream"]) | set(edges["downstream"]), key=node_position)
    columns = sorted({node_position(n)[0] for n in names})
    members: dict[int, list[str]] = {}
    for name in names:
        members.setdefault(columns.index(node_position(name)[0]), []).append(name)
    return {
        name: (col, row, len(group))
        for col, group in members.items()
        for row, name in enumerate(group)
    }


def link_color(score: float) -> str:
    return NEGATIVE if score < 0 else POSITIVE


def sankey_figure(edges: pd.DataFrame, title: str) -> go.Figure:
    positions = layout(edges)
    names = list(positions)
    n_columns = max((col for col, _, _ in positions.values()), default=0) + 1
    # plotly places nodes only strictly inside (0, 1).
    x = [0.01 + 0.98 * positions[n][0] / max(n_columns - 1, 1) for n in names]
    y = [(positions[n][1] + 1) / (positions[n][2] + 1) for n in names]
    index = {name: i for i, name in enumerate(names)}
    hover = [
        f"{e.upstream} → {e.downstream}<br>score {e.score:.4g} (rank {e.rank})"
        f"<br>in the top edges of every batch: {'yes' if e.in_top_every_batch else 'no'}"
        for e in edges.itertuples()
    ]
    fig = go.Figure(go.Sankey(
        arrangement="fixed",
        node=dict(label=names, x=x, y=y, pad=15, thickness=18, color="rgba(90, 90, 90, 0.8)"),
        link=dict(
            source=[index[u] for u in edges["upstream"]],
            target=[index[d] for d in edges["downstream"]],
            value=edges["score"].abs().tolist(),
            color=[link_color(s) for s in edges["score"]],
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
        ),
    ))
    fig.update_layout(
        title=title, font_size=13, width=max(600, 160 * n_columns), height=500,
        paper_bgcolor="white",
    )
    return fig


def sankey_png_figure(edges: pd.DataFrame, title: str):
    """The same diagram in matplotlib: a box per node, a curve per edge."""
    positions = layout(edges)
    n_columns = max((col for col, _, _ in positions.values()), default=0) + 1
    tallest = max((n for _, _, n in positions.values()), default=1)
    fig, ax = plt.subplots(figsize=(2 + 1.8 * n_columns, 2 + 0.55 * tallest))
    box_w, box_h = 0.9, 0.36

    def centre(name):
        col, row, n = positions[name]
        # Columns are vertically centred on one another.
        return 2.0 * col, (tallest - 1) / 2 - row + (n - 1) / 2

    column_top: dict[int, float] = {}
    for name, (col, _, _) in positions.items():
        column_top[col] = max(column_top.get(col, -1e9), centre(name)[1])
    biggest = edges["score"].abs().max() if len(edges) else 1.0
    highest = tallest - 1
    for e in edges.itertuples():
        (x0, y0), (x1, y1) = centre(e.upstream), centre(e.downstream)
        x0, x1 = x0 + box_w / 2, x1 - box_w / 2
        mid = (x0 + x1) / 2
        controls = [(mid, y0), (mid, y1)]
        skipped = range(positions[e.upstream][0] + 1, positions[e.downstream][0])
        if skipped:
            # A link that skips columns arcs over their boxes, so it is not read as passing
            # through them. A cubic's midpoint is at (y0 + y1) / 8 + 3/4 of the height of two
            # equal control points.
            peak = max([column_top[c] for c in skipped] + [max(y0, y1) - 0.3]) + 0.45
            lift = (peak - (y0 + y1) / 8) / 0.75
            controls = [(mid, lift), (mid, lift)]
            highest = max(highest, peak)
        curve = Path([(x0, y0), *controls, (x1, y1)], [Path.MOVETO] + [Path.CURVE4] * 3)
        ax.add_patch(PathPatch(
            curve, facecolor="none", edgecolor="tab:red" if e.score < 0 else "tab:blue",
            alpha=0.5, linewidth=1 + 9 * abs(e.score) / (biggest or 1.0),
            linestyle="-" if e.in_top_every_batch else "--", capstyle="butt",
        ))
    for name in positions:
        x, y = centre(name)
        ax.add_patch(FancyBboxPatch(
            (x - box_w / 2, y - box_h / 2), box_w, box_h, boxstyle="round,pad=0.02",
            facecolor="whitesmoke", edgecolor="dimgray", zorder=3,
        ))
        ax.text(x, y, name, ha="center", va="center", fontsize=9, zorder=4)
    if not positions:
        ax.text(0, 0, "no edges", ha="center", va="center")
    ax.set_xlim(-1, 2.0 * (n_columns - 1) + 1)
    ax.set_ylim(-0.8, highest + 0.4)
    ax.axis("off")
    ax.legend(
        handles=[
            Line2D([], [], color="tab:blue", lw=3, label="positive: carries the clean answer"),
            Line2D([], [], color="tab:red", lw=3, label="negative: carries the corrupt answer"),
            Line2D([], [], color="gray", lw=2, ls="--", label="not in the top edges of every batch"),
        ],
        loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8, frameon=False,
    )
    ax.set_title(title + "\nlink width ∝ |score|", fontsize=11)
    return fig


def faithfulness_figure(curve: pd.DataFrame, summary: pd.DataFrame, title: str,
                        warning: str | None = None):
    """Faithfulness against the share of the graph's edges in the circuit (log axis): EAP's
    circuits as a line, the random circuits' range over draws as a band, CPR and CMD in the
    legend; ``warning`` (why the run is ill-conditioned) in words under the plot."""
    total = int(curve["n_edges_total"].iloc[0])
    areas = summary.set_index("circuit")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    eap = curve[curve["circuit"] == "eap"].drop_duplicates("n_edges_in_circuit")
    eap = eap.sort_values("n_edges_in_circuit")
    percent = 100 * eap["n_edges_in_circuit"] / total
    ranking = areas.loc["eap", "ranking"]
    ax.plot(percent, eap["faithfulness"], marker="o", color="tab:blue", zorder=3, label=(
        f"EAP top edges by {'|score|' if ranking == 'absolute' else 'signed score'}: "
        f"CPR {areas.loc['eap', 'cpr']:.3f}, CMD {areas.loc['eap', 'cmd']:.3f}"
    ))
    random = curve[curve["circuit"] == "random"]
    if len(random):
        band = random.groupby("n_edges_in_circuit")["faithfulness"].agg(["min", "max", "mean"])
        x = 100 * band.index.to_numpy() / total
        a = areas.loc["random"]

        def spread(std: float) -> str:  # none from a single draw
            return "" if pd.isna(std) else f" ± {std:.3f}"

        ax.fill_between(x, band["min"], band["max"], color="gray", alpha=0.3, lw=0, label=(
            f"random circuits, range of {a['n_curves']} draws: CPR {a['cpr']:.3f}"
            f"{spread(a['cpr_std'])}, CMD {a['cmd']:.3f}{spread(a['cmd_std'])}"
        ))
        ax.plot(x, band["mean"], color="gray", lw=1, ls="-.", label="random circuits, mean")
    ax.axhline(1, color="gray", ls="--", lw=1, label="full model (1)")
    ax.axhline(0, color="gray", ls=":", lw=1, label="corrupt input (0)")
    # Logarithmic from the smallest circuit on; linear below it, so an empty circuit still shows.
    smallest = percent[percent > 0].min() if (percent > 0).any() else 100.0
    ax.set_xscale("symlog", linthresh=smallest)
    ax.set_xlim(0, 100)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_xlabel("edges in the circuit (% of the graph's edges)")
    ax.set_ylabel("normalised faithfulness")
    ax.set_title(f"{title}\n{total:,} edges in the graph")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    if warning:
        fig.text(0.5, -0.02, textwrap.fill(
            f"Ill-conditioned EAP result: {warning}. Faithfulness is unreliable.", 100
        ), ha="center", va="top", fontsize=8, color="darkred", wrap=True)
    return fig


def ill_conditioned_reason(results_json: str) -> str | None:
    """Why eap_results.json marks its run ill-conditioned, or None when it does not."""
    results = read_json(results_json)
    diagnostics = results.get("diagnostics") if isinstance(results, dict) else None
    if not isinstance(diagnostics, dict) or "ill_conditioned" not in diagnostics:
        raise JsonFileError(f"{results_json}: no diagnostics block; run rule eap again to rebuild it")
    return diagnostics["reason"] if diagnostics["ill_conditioned"] else None


def run_stage(
    params: dict, top_edges: str, faithfulness: str, faithfulness_summary: str,
    results_json: str, sankey_html: str, sankey_png: str, faithfulness_png: str,
) -> None:
    edges = read_table(top_edges, columns=TOP_EDGE_COLUMNS)
    curve = read_table(faithfulness, columns=FAITHFULNESS_COLUMNS)
    summary = read_table(faithfulness_summary, columns=SUMMARY_COLUMNS)
    warning = ill_conditioned_reason(results_json)
    about = f"{params['model']} / {params['dataset']} / {params['feature']}"
    sankey_title = f"EAP top edges: {about}" + (
        " (ILL-CONDITIONED: see eap_results.json)" if warning else ""
    )
    dpi = params["plots"]["dpi"]
    with atomic_path(sankey_html) as tmp:
        # The plotly library is embedded so the page opens without network access.
        sankey_figure(edges, sankey_title).write_html(tmp, include_plotlyjs=True)
    save_figure(sankey_png_figure(edges, sankey_title), sankey_png, dpi=dpi)
    save_figure(
        faithfulness_figure(curve, summary, f"Circuit faithfulness: {about}", warning),
        faithfulness_png, dpi=dpi,
    )


STAGE = Stage(
    "eap-plots", run_stage, ("top_edges", "faithfulness", "faithfulness_summary", "results_json"),
    ("sankey_html", "sankey_png", "faithfulness_png"),
    reads=("plots",), job=("model", "dataset", "feature"),
)
