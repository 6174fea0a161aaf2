"""Figures of stage node-pca: PC0 against PC1 of the most separating nodes, coloured by class
(PNG, and HTML whose hover names each example), and separation accuracy over nodes × sites.

"Most separating": the highest cross-validated accuracy above chance, ties broken by the
silhouette of the true classes.
"""

from __future__ import annotations

import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from circuitflow import nodes
from circuitflow.outputs import save_figure, save_interactive

NO_DATA = "no node was analysed: no correctly answered example with a class at any site"
COLUMNS = 4
COLOURS = plt.get_cmap("tab10").colors


def class_order(classes) -> list[str]:
    """Classes with their numbers in numeric order (T8, T9, T10)."""
    return sorted(set(classes), key=lambda c: [int(t) if t.isdigit() else t
                                               for t in re.split(r"(\d+)", c)])


def most_separating(summary: pd.DataFrame, n: int) -> pd.DataFrame:
    scored = summary[summary["separation_accuracy"].notna()]
    lift = scored["separation_accuracy"] - scored["chance_accuracy"]
    order = np.lexsort((-scored["class_silhouette"].fillna(-1).to_numpy(), -lift.to_numpy()))
    return scored.iloc[order[:n]]


def _panel_title(row) -> str:
    evr = ", ".join(f"{v:.0%}" for v in (row.evr_0, row.evr_1) if not math.isnan(v))
    return (f"{row.node} at {row.site}: EVR {evr}\n"
            f"acc {row.separation_accuracy:.2f} (chance {row.chance_accuracy:.2f}), "
            f"clusters {row.verdict}")


def _panel_points(points: pd.DataFrame, row) -> pd.DataFrame:
    part = points[(points["node"] == row.node) & (points["site"] == row.site)]
    return part.assign(pc1=part["pc1"].fillna(0.0))  # no PC1 when the outputs span one line


def _empty_figure(title: str):
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.text(0.5, 0.5, NO_DATA, ha="center", va="center", transform=ax.transAxes, fontsize=8)
    ax.set_axis_off()
    ax.set_title(title)
    return fig


def scatter_figure(summary: pd.DataFrame, points: pd.DataFrame, title: str, n: int):
    shown = most_separating(summary, n)
    if shown.empty:
        return _empty_figure(title)
    colour = {c: COLOURS[i % len(COLOURS)] for i, c in enumerate(class_order(points["class"]))}
    cols = min(COLUMNS, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(3.6 * cols, 3.3 * rows))
    for ax in axes.flat[len(shown):]:
        ax.set_axis_off()
    for ax, row in zip(axes.flat, shown.itertuples()):
        part = _panel_points(points, row)
        for c in class_order(part["class"]):
            mine = part[part["class"] == c]
            ax.scatter(mine["pc0"], mine["pc1"], s=6, alpha=0.6, color=colour[c],
                       label=f"{c} (n={len(mine)})")
        ax.set_title(_panel_title(row), fontsize=7)
        ax.set_xlabel("PC0", fontsize=7)
        ax.set_ylabel("PC1", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6, markerscale=2, loc="best")
    fig.suptitle(f"{title}: PC0 vs PC1 of the {len(shown)} most class-separating nodes")
    fig.tight_layout()
    return fig


def scatter_page(summary: pd.DataFrame, points: pd.DataFrame, title: str, n: int) -> go.Figure:
    shown = most_separating(summary, n)
    if shown.empty:
        return go.Figure(layout={"title": f"{title}: {NO_DATA}"})
    cols = min(COLUMNS, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = make_subplots(
        rows=rows, cols=cols,
        subplot_titles=[_panel_title(r).replace("\n", "<br>") for r in shown.itertuples()],
    )
    plotted = pd.concat([_panel_points(points, r) for r in shown.itertuples()])
    classes = class_order(plotted["class"])
    # Counts of distinct examples: the sites of the panels mostly share them.
    counts = plotted.drop_duplicates(["example_id"])["class"].value_counts()
    for i, row in enumerate(shown.itertuples()):
        part = _panel_points(points, row)
        for j, c in enumerate(classes):
            mine = part[part["class"] == c]
            fig.add_trace(go.Scatter(
                x=mine["pc0"], y=mine["pc1"], mode="markers", name=f"{c} (n={counts.get(c, 0)})",
                legendgroup=c, showlegend=i == 0,
                marker={"size": 5, "opacity": 0.7, "color": _rgb(COLOURS[j % len(COLOURS)])},
                customdata=np.stack([mine["example_id"], mine["class"]], axis=1),
                hovertemplate="example %{customdata[0]}<br>class %{customdata[1]}"
                              "<br>PC0 %{x:.3g}, PC1 %{y:.3g}<extra>" + row.node + "</extra>",
            ), row=i // cols + 1, col=i % cols + 1)
    fig.update_annotations(font_size=10)
    fig.update_layout(
        title=f"{title}: PC0 vs PC1 of the {len(shown)} most class-separating nodes",
        height=320 * rows + 100, width=330 * cols + 150,
    )
    return fig


def _rgb(colour) -> str:
    return "rgb({}, {}, {})".format(*(round(255 * v) for v in colour))


def separation_grid(summary: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str]]:
    """Separation accuracy as [nodes in model order, sites], NaN where not scored."""
    node_order = sorted(summary["node"].unique(), key=nodes.sort_key)
    site_order = list(dict.fromkeys(summary["site"]))
    grid = summary.pivot(index="node", columns="site", values="separation_accuracy")
    return grid.loc[node_order, site_order].to_numpy(dtype=float), node_order, site_order


def heatmap_figure(summary: pd.DataFrame, title: str):
    if summary.empty:
        return _empty_figure(title)
    grid, node_order, site_order = separation_grid(summary)
    chance = summary.groupby("site")["chance_accuracy"].first()
    labels = [f"{s}\n(chance {chance[s]:.2f})" for s in site_order]
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(site_order) + 2.5),
                                    max(3, 0.22 * len(node_order) + 1.5)))
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto",
                      interpolation="nearest")
    if grid.size <= 600:
        for (r, c), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if value > 0.6 else "white")
    ax.set_yticks(range(len(node_order)), node_order, fontsize=7)
    ax.set_xticks(range(len(site_order)), labels, fontsize=7)
    ax.set_xlabel("site (position read)")
    ax.set_ylabel("node")
    ax.set_title(f"{title}: class separation (cross-validated accuracy on the top PCs)",
                 fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy", pad=0.01)
    fig.tight_layout()
    return fig


def write_plots(
    summary: pd.DataFrame, points: pd.DataFrame, title: str, n: int, dpi: int,
    scatter: str, interactive: str, heatmap: str,
) -> None:
    save_figure(scatter_figure(summary, points, title, n), scatter, dpi=dpi)
    save_interactive(scatter_page(summary, points, title, n), interactive)
    save_figure(heatmap_figure(summary, title), heatmap, dpi=dpi)
