"""Stage ablation-plots: fail-rate heatmaps per layer and per role, the position bar chart, the
quanta map.

Positions are labelled "position role n=N" with the role most examples have there and the number
of examples tried there. A rate resting on fewer than ``plots.min_count`` examples is drawn grey,
not in colour: in long prompts the last positions hold a handful of examples, whose 0% or 100%
says little. The heatmaps also go to an interactive HTML page, where hovering names each cell's
node, position, fail % and counts.
"""

from __future__ import annotations

from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from plotly.subplots import make_subplots

# Imported by name: run_stage's ``nodes`` argument is a path.
from circuitflow.json_files import read_json
from circuitflow.nodes import from_quanta, sort_key
from circuitflow.outputs import save_figure, save_interactive
from circuitflow.proportions import wilson_interval
from circuitflow.stage import Stage
from circuitflow.tables import read_table

NODE_COLUMNS = ["node", "layer", "position", "role", "n_tried", "n_failed", "fail_rate"]
POSITION_COLUMNS = ["position", "role", "n_tried", "n_failed", "fail_rate"]
ROLE_COLUMNS = ["node", "role", "n_tried", "n_failed", "fail_rate", "n_examples",
                "first_position"]
LOW_COUNT = "0.75"  # the grey of cells resting on too few examples
QUANTA_PANEL_POSITIONS = 40  # columns per quanta-map panel: wider maps are unreadable
NO_DATA = "nothing was ablated: the model answers no example correctly"


def examples_in(summary: pd.DataFrame) -> int:
    """How many examples a per-position summary rests on: every example is tried at position 0."""
    at_start = summary.loc[summary["position"] == 0, "n_tried"]
    return int(at_start.max()) if len(at_start) else 0


def figure_title(model: str, dataset: str, summary: pd.DataFrame) -> str:
    return f"{model} {dataset}, {examples_in(summary)} examples"


def count_label(counts) -> str:
    """``n=5``, or ``n=3–5`` where the cells of one column rest on different counts."""
    low, high = int(np.min(counts)), int(np.max(counts))
    return f"n={low}" if low == high else f"n={low}–{high}"


def position_labels(table: pd.DataFrame) -> dict[int, str]:
    """"position role n=N" per position: its most common role, how many examples it was tried on."""
    roles = table.drop_duplicates("position").set_index("position")["role"]
    counts = table.groupby("position")["n_tried"].agg(count_label)
    return {int(p): f"{p} {role} {counts[p]}" for p, role in roles.items()}


class Grid(NamedTuple):
    """Fail % per (row, column) with the counts behind it; NaN and 0 where nothing was tried.
    ``n`` is the number of examples a cell rests on (n_tried, or n_examples for roles)."""

    rates: np.ndarray
    n: np.ndarray
    n_tried: np.ndarray
    n_failed: np.ndarray
    rows: list
    columns: list

    def too_few(self, min_count: int) -> np.ndarray:
        """Cells tried on some examples, but on fewer than ``min_count``."""
        return (self.n > 0) & (self.n < min_count)


def cell_grid(table: pd.DataFrame, column: str, rows: list, columns: list,
              count: str = "n_tried") -> Grid:
    shape = (len(rows), len(columns))
    rates = np.full(shape, np.nan)
    n, n_tried, n_failed = (np.zeros(shape, dtype=int) for _ in range(3))
    row_index = {name: i for i, name in enumerate(rows)}
    column_index = {value: j for j, value in enumerate(columns)}
    part = table[table["node"].isin(row_index) & table[column].isin(column_index)]
    i = part["node"].map(row_index).to_numpy(int)
    j = part[column].map(column_index).to_numpy(int)
    rates[i, j] = part["fail_rate"]
    n[i, j], n_tried[i, j], n_failed[i, j] = part[count], part["n_tried"], part["n_failed"]
    return Grid(rates, n, n_tried, n_failed, list(rows), list(columns))


def node_grid(summary: pd.DataFrame, layer: int) -> Grid:
    """One layer's nodes (heads, then the MLP) x every position."""
    rows = sorted(summary.loc[summary["layer"] == layer, "node"].unique(), key=sort_key)
    return cell_grid(summary, "position", rows, sorted(summary["position"].unique()))


def role_order(by_role: pd.DataFrame) -> list[str]:
    """Roles in the order they first occur in a typical example (median first position)."""
    roles = by_role.drop_duplicates("role").sort_values(["first_position", "role"])
    return roles["role"].tolist()


def role_grid(by_role: pd.DataFrame) -> Grid:
    """Every node, in model order, x every role; a cell rests on its n_examples."""
    rows = sorted(by_role["node"].unique(), key=sort_key)
    return cell_grid(by_role, "role", rows, role_order(by_role), count="n_examples")


def draw_cells(ax, grid: Grid, min_count: int, cmap: str):
    """Rates in colour, cells resting on fewer than ``min_count`` examples grey, untried ones
    blank. Returns the colour image (for the colour bar)."""
    too_few = grid.too_few(min_count)
    shown = np.ma.masked_where(too_few | np.isnan(grid.rates), grid.rates)
    image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=100, aspect="auto", interpolation="nearest")
    ax.imshow(np.ma.masked_where(~too_few, np.zeros(too_few.shape)), cmap=ListedColormap([LOW_COUNT]),
              aspect="auto", interpolation="nearest")
    return image


def low_count_note(fig, min_count: int) -> None:
    fig.legend(
        handles=[Patch(facecolor=LOW_COUNT, edgecolor="0.4",
                       label=f"grey: resting on fewer than {min_count} examples "
                             "(plots.min_count)")],
        loc="outside lower left", fontsize=7, frameon=False,
    )


def message_figure(message: str, title: str):
    fig, ax = plt.subplots(figsize=(6, 2), layout="constrained")
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    ax.set_title(title)
    return fig


def heatmaps_figure(summary: pd.DataFrame, title: str, min_count: int):
    if summary.empty:
        return message_figure(NO_DATA, title)
    layers = sorted(summary["layer"].unique())
    labels = position_labels(summary)
    n_rows = len(node_grid(summary, layers[0]).rows)
    n_positions = summary["position"].nunique()
    fig, axes = plt.subplots(
        len(layers), 1, squeeze=False, layout="constrained",
        figsize=(max(6, 0.16 * n_positions + 2), len(layers) * (0.25 * n_rows + 2.6)),
    )
    for ax, layer in zip(axes[:, 0], layers):
        grid = node_grid(summary, layer)
        image = draw_cells(ax, grid, min_count, "viridis")
        ax.set_yticks(range(len(grid.rows)), grid.rows, fontsize=7)
        ax.set_xticks(range(len(grid.columns)), [labels[p] for p in grid.columns],
                      rotation=90, fontsize=6)
        ax.set_xlabel("token position (most common role, examples tried there)")
        ax.set_ylabel("node")
        ax.set_title(f"layer {layer}", fontsize=9)
        fig.colorbar(image, ax=ax, label="fail %", pad=0.01)
    fig.suptitle(f"{title}: % of answers changed when a node is ablated at one position")
    low_count_note(fig, min_count)
    return fig


def interactive_heatmaps(summary: pd.DataFrame, title: str, min_count: int) -> go.Figure:
    if summary.empty:
        return go.Figure(layout={"title": f"{title}: {NO_DATA}"})
    layers = sorted(summary["layer"].unique())
    labels = position_labels(summary)
    n_rows = len(node_grid(summary, layers[0]).rows)
    fig = make_subplots(rows=len(layers), cols=1, subplot_titles=[f"layer {l}" for l in layers])
    hover = "%{y} at %{x}: %{customdata[2]:.1f}% failed (n_failed %{customdata[1]} of n_tried "
    for i, layer in enumerate(layers, start=1):
        grid = node_grid(summary, layer)
        too_few = grid.too_few(min_count)
        x = [labels[p] for p in grid.columns]
        counts = np.stack([grid.n_tried, grid.n_failed, grid.rates], axis=-1)
        fig.add_trace(go.Heatmap(
            z=np.where(too_few, np.nan, grid.rates), x=x, y=grid.rows, zmin=0, zmax=100,
            colorscale="Viridis", colorbar={"title": "fail %"}, showscale=i == 1,
            customdata=counts, hoverongaps=False, name=f"layer {layer}",
            hovertemplate=hover + "%{customdata[0]})<extra></extra>",
        ), row=i, col=1)
        fig.add_trace(go.Heatmap(
            z=np.where(too_few, 0.0, np.nan), x=x, y=grid.rows, showscale=False,
            colorscale=[[0, "lightgrey"], [1, "lightgrey"]], customdata=counts,
            hoverongaps=False, name=f"layer {layer}: fewer than {min_count} examples",
            hovertemplate=hover + f"%{{customdata[0]}}: fewer than {min_count})<extra></extra>",
        ), row=i, col=1)
    fig.update_layout(
        title=f"{title}: % of answers changed when a node is ablated at one position "
              f"(grey: fewer than {min_count} examples)",
        height=max(400, 60 + len(layers) * (18 * n_rows + 80)),
    )
    return fig


def role_figure(by_role: pd.DataFrame, title: str, min_count: int):
    """Every node x every role: the fail % of ablating the node at one position of that role,
    pooled over the role's positions in every example."""
    if by_role.empty:
        return message_figure(NO_DATA, title)
    grid = role_grid(by_role)
    fig, ax = plt.subplots(
        layout="constrained",
        figsize=(max(6, 0.55 * len(grid.columns) + 3), max(3, 0.22 * len(grid.rows) + 2.5)),
    )
    image = draw_cells(ax, grid, min_count, "viridis")
    shown = ~grid.too_few(min_count) & ~np.isnan(grid.rates)
    for (r, c), rate in np.ndenumerate(grid.rates):
        if shown[r, c]:
            ax.text(c, r, f"{rate:.0f}", ha="center", va="center", fontsize=6,
                    color="black" if rate > 60 else "white")
    ax.set_yticks(range(len(grid.rows)), grid.rows, fontsize=7)
    ax.set_xticks(range(len(grid.columns)),
                  [f"{role} {count_label(grid.n[:, j])}" for j, role in enumerate(grid.columns)],
                  rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_xlabel("role (in order of first occurrence; examples holding it)")
    ax.set_ylabel("node")
    ax.set_title(f"{title}: % of answers changed when a node is ablated at one position of "
                 "the role", fontsize=9)
    fig.colorbar(image, ax=ax, label="fail %", pad=0.01)
    low_count_note(fig, min_count)
    return fig


def positions_figure(summary: pd.DataFrame, title: str, min_count: int):
    """Fail % per position with Wilson 95% intervals; positions with too few examples grey."""
    labels = position_labels(summary)
    low, high = wilson_interval(summary["n_failed"], summary["n_tried"])
    rate = summary["fail_rate"].to_numpy()
    too_few = (summary["n_tried"] < min_count).to_numpy()
    fig, ax = plt.subplots(figsize=(max(6, 0.16 * len(summary) + 2), 4.5), layout="constrained")
    ax.bar(
        range(len(summary)), rate, color=np.where(too_few, LOW_COUNT, "tab:blue"),
        hatch=["//" if few else "" for few in too_few],
        yerr=np.stack([rate - 100 * low, 100 * high - rate]),
        error_kw={"elinewidth": 0.7, "capsize": 1.5, "ecolor": "black"},
    )
    ax.set_xticks(range(len(summary)), [labels[p] for p in summary["position"]],
                  rotation=90, fontsize=6)
    ax.set_ylim(0, 100)
    ax.set_xlabel("token position (most common role, examples tried there)")
    ax.set_ylabel("fail %")
    ax.set_title(f"{title}: % of answers changed when a position is zeroed in every layer")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(handles=[
        Patch(facecolor="tab:blue", label="fail %; error bars: Wilson 95% interval"),
        Patch(facecolor=LOW_COUNT, hatch="//",
              label=f"grey: resting on fewer than {min_count} examples (plots.min_count)"),
    ], loc="outside lower left", ncols=2, fontsize=7, frameon=False)
    return fig


def role_panels(positions: list[int], roles: dict[int, str],
                width: int = QUANTA_PANEL_POSITIONS) -> list[list[int]]:
    """Positions split into panels of at most ``width``, keeping each run of positions with one
    role in one panel where it fits in one."""
    runs: list[list[int]] = []
    for position in positions:
        if runs and roles.get(runs[-1][-1]) == roles.get(position):
            runs[-1].append(position)
        else:
            runs.append([position])
    panels: list[list[int]] = [[]]
    for run in runs:
        if len(panels[-1]) + len(run) > width and panels[-1]:
            panels.append([])
        for position in run:
            if len(panels[-1]) == width:
                panels.append([])
            panels[-1].append(position)
    return panels


def quanta_figure(useful: list[dict], summary: pd.DataFrame, title: str, min_count: int,
                  width: int = QUANTA_PANEL_POSITIONS):
    """One row per useful node, one column per position that has one, the fail % in each cell;
    positions in panels of at most ``width``, runs of one role kept together."""
    if not useful:
        return message_figure("no node exceeds the useful threshold", f"{title}: useful nodes")
    placed = {from_quanta(n): float(n["tags"][0].split(":")[1]) for n in useful}
    rows = sorted({name for name, _ in placed}, key=sort_key)
    roles = summary.drop_duplicates("position").set_index("position")["role"].to_dict()
    labels = position_labels(summary)
    panels = role_panels(sorted({position for _, position in placed}), roles, width)
    columns = max(len(panel) for panel in panels)
    fig, axes = plt.subplots(
        len(panels), 1, squeeze=False, layout="constrained",
        figsize=(max(5, 0.3 * columns + 2.5), len(panels) * (0.25 * len(rows) + 1.8)),
    )
    for ax, panel in zip(axes[:, 0], panels):
        grid = cell_grid(summary, "position", rows, panel)
        useful_cells = np.array([[(name, p) in placed for p in panel] for name in rows])
        rates = np.where(useful_cells, grid.rates, np.nan)
        grid = grid._replace(rates=rates, n=np.where(useful_cells, grid.n, 0))
        image = draw_cells(ax, grid, min_count, "Reds")
        too_few = grid.too_few(min_count)
        for (r, c), is_useful in np.ndenumerate(useful_cells):
            if is_useful:
                rate = placed[(rows[r], panel[c])]
                ax.text(c, r, f"{rate:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if rate > 60 and not too_few[r, c] else "black")
        for c in range(1, len(panel)):
            if roles.get(panel[c]) != roles.get(panel[c - 1]):
                ax.axvline(c - 0.5, color="0.35", linewidth=0.8)
        ax.set_xlim(-0.5, columns - 0.5)  # equal cell widths in every panel
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xticks(range(len(panel)), [labels.get(p, str(p)) for p in panel],
                      rotation=90, fontsize=7)
        ax.set_ylabel("node")
    axes[-1, 0].set_xlabel("token position (most common role, examples tried there); "
                           "lines separate roles")
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="fail %", pad=0.01, shrink=0.9)
    fig.suptitle(f"{title}: useful nodes ({len(useful)} node-positions), fail % per position")
    low_count_note(fig, min_count)
    return fig


def run_stage(
    params: dict, nodes: str, positions: str, by_role: str, useful: str,
    heatmaps: str, heatmaps_interactive: str, position_chart: str, quanta_map: str, role_heatmap: str,
) -> None:
    node_summary = read_table(nodes, columns=NODE_COLUMNS)
    position_summary = read_table(positions, columns=POSITION_COLUMNS)
    role_summary = read_table(by_role, columns=ROLE_COLUMNS)
    useful_list = read_json(useful)
    dpi, min_count = params["plots"]["dpi"], params["plots"]["min_count"]
    node_title = figure_title(params["model"], params["dataset"], node_summary)
    save_figure(heatmaps_figure(node_summary, node_title, min_count), heatmaps, dpi=dpi)
    save_interactive(interactive_heatmaps(node_summary, node_title, min_count),
                     heatmaps_interactive)
    position_title = figure_title(params["model"], params["dataset"], position_summary)
    save_figure(positions_figure(position_summary, position_title, min_count), position_chart,
                dpi=dpi)
    save_figure(quanta_figure(useful_list, node_summary, node_title, min_count), quanta_map,
                dpi=dpi)
    save_figure(role_figure(role_summary, node_title, min_count), role_heatmap, dpi=dpi)


STAGE = Stage(
    "ablation-plots", run_stage, ("nodes", "positions", "by_role", "useful"),
    ("heatmaps", "heatmaps_interactive", "position_chart", "quanta_map", "role_heatmap"),
    reads=("plots.dpi", "plots.min_count"), job=("model", "dataset"),
)
