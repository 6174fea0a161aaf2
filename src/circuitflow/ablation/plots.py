"""Stage ablation-plots: fail-rate heatmaps per layer, the position bar chart, the quanta map.

Positions are labelled "position role" with the role most examples have there. The heatmaps also
go to an interactive HTML page, where hovering names each cell's node, position and fail %.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# Imported by name: run_stage's ``nodes`` argument is a path.
from circuitflow.json_files import read_json
from circuitflow.nodes import from_quanta, sort_key
from circuitflow.outputs import atomic_path, save_figure
from circuitflow.stage import Stage
from circuitflow.tables import read_table

NODE_COLUMNS = ["node", "layer", "position", "role", "n_tried", "fail_rate"]
POSITION_COLUMNS = ["position", "role", "n_tried", "fail_rate"]


def position_labels(table: pd.DataFrame) -> dict[int, str]:
    roles = table.drop_duplicates("position").set_index("position")["role"]
    return {int(p): f"{p} {role}" for p, role in roles.items()}


def node_grid(summary: pd.DataFrame, layer: int) -> tuple[np.ndarray, list[str], list[int]]:
    """Fail % of one layer as [its nodes (heads, then the MLP), positions] (NaN where nothing
    was tried)."""
    part = summary[summary["layer"] == layer]
    rows = sorted(part["node"].unique(), key=sort_key)
    positions = sorted(summary["position"].unique())
    grid = np.full((len(rows), len(positions)), np.nan)
    column = {p: i for i, p in enumerate(positions)}
    for row in part.itertuples():
        grid[rows.index(row.node), column[row.position]] = row.fail_rate
    return grid, rows, positions


NO_DATA = "nothing was ablated: the model answers no example correctly"


def heatmaps_figure(summary: pd.DataFrame, title: str):
    if summary.empty:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, NO_DATA, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        ax.set_title(title)
        return fig
    layers = sorted(summary["layer"].unique())
    labels = position_labels(summary)
    n_rows = len(node_grid(summary, layers[0])[1])
    n_positions = summary["position"].nunique()
    fig, axes = plt.subplots(
        len(layers), 1, squeeze=False,
        figsize=(max(6, 0.16 * n_positions + 2), len(layers) * (0.25 * n_rows + 2.2)),
    )
    for ax, layer in zip(axes[:, 0], layers):
        grid, rows, positions = node_grid(summary, layer)
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto",
                          interpolation="nearest")
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xticks(
            range(len(positions)), [labels[p] for p in positions], rotation=90, fontsize=6
        )
        ax.set_xlabel("token position (most common role)")
        ax.set_ylabel("node")
        ax.set_title(f"{title}: layer {layer}, % of answers changed when the node is ablated")
        fig.colorbar(image, ax=ax, label="fail %", pad=0.01)
    fig.tight_layout()
    return fig


def heatmaps_html(summary: pd.DataFrame, title: str) -> go.Figure:
    if summary.empty:
        return go.Figure(layout={"title": f"{title}: {NO_DATA}"})
    layers = sorted(summary["layer"].unique())
    labels = position_labels(summary)
    n_rows = len(node_grid(summary, layers[0])[1])
    fig = make_subplots(rows=len(layers), cols=1, subplot_titles=[f"layer {l}" for l in layers])
    for i, layer in enumerate(layers, start=1):
        grid, rows, positions = node_grid(summary, layer)
        fig.add_trace(go.Heatmap(
            z=grid, x=[labels[p] for p in positions], y=rows, zmin=0, zmax=100,
            colorscale="Viridis", colorbar={"title": "fail %"}, showscale=i == 1,
            hovertemplate="%{y} at %{x}: %{z:.1f}% failed<extra></extra>",
        ), row=i, col=1)
    fig.update_layout(title=f"{title}: % of answers changed when a node is ablated",
                      height=max(400, 60 + len(layers) * (18 * n_rows + 80)))
    return fig


def positions_figure(summary: pd.DataFrame, title: str):
    labels = position_labels(summary)
    fig, ax = plt.subplots(figsize=(max(6, 0.16 * len(summary) + 2), 4))
    ax.bar(range(len(summary)), summary["fail_rate"], color="tab:blue")
    ax.set_xticks(range(len(summary)), [labels[p] for p in summary["position"]],
                  rotation=90, fontsize=6)
    ax.set_ylim(0, 100)
    ax.set_xlabel("token position (most common role)")
    ax.set_ylabel("fail %")
    ax.set_title(f"{title}: % of answers changed when a position is zeroed in every layer")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def quanta_figure(useful: list[dict], labels: dict[int, str], title: str):
    """One row per useful node, one column per position that has one, the fail % in each cell."""
    placed = [(*from_quanta(n), float(n["tags"][0].split(":")[1])) for n in useful]
    rows = sorted({name for name, _, _ in placed}, key=sort_key)
    positions = sorted({position for _, position, _ in placed})
    grid = np.full((len(rows), len(positions)), np.nan)
    for name, position, rate in placed:
        grid[rows.index(name), positions.index(position)] = rate
    size = (max(4, 0.7 * len(positions) + 2), max(2.5, 0.3 * len(rows) + 1.5))
    fig, ax = plt.subplots(figsize=size)
    if useful:
        ax.imshow(grid, cmap="Reds", vmin=0, vmax=100, aspect="auto")
        for (r, c), rate in np.ndenumerate(grid):
            if not np.isnan(rate):
                ax.text(c, r, f"{rate:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if rate > 60 else "black")
    else:
        ax.text(0.5, 0.5, "no node exceeds the useful threshold", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xticks(range(len(positions)), [labels.get(p, str(p)) for p in positions],
                  rotation=90, fontsize=7)
    ax.set_xlabel("token position (most common role)")
    ax.set_ylabel("node")
    ax.set_title(f"{title}: useful nodes ({len(useful)}), fail % per position")
    fig.tight_layout()
    return fig


def run_stage(
    params: dict, nodes: str, positions: str, useful: str,
    heatmaps: str, heatmaps_page: str, position_chart: str, quanta_map: str,
) -> None:
    node_summary = read_table(nodes, columns=NODE_COLUMNS)
    position_summary = read_table(positions, columns=POSITION_COLUMNS)
    useful_list = read_json(useful)
    title = f"{params['model']} {params['dataset']}"
    dpi = params["plots"]["dpi"]
    save_figure(heatmaps_figure(node_summary, title), heatmaps, dpi=dpi)
    with atomic_path(heatmaps_page) as tmp:
        # The plotly library is embedded so the page opens without network access.
        heatmaps_html(node_summary, title).write_html(tmp, include_plotlyjs=True)
    save_figure(positions_figure(position_summary, title), position_chart, dpi=dpi)
    labels = position_labels(node_summary)
    save_figure(quanta_figure(useful_list, labels, title), quanta_map, dpi=dpi)


STAGE = Stage(
    "ablation-plots", run_stage, ("nodes", "positions", "useful"),
    ("heatmaps", "heatmaps_page", "position_chart", "quanta_map"),
    reads=("plots",), job=("model", "dataset"),
)
