"""Stage summary: one table and one figure comparing every model and command set of a sweep.

Clean accuracy, useful nodes per layer (from the node ablation) and the strongest edges per EAP
feature, side by side, so a sweep over models and command sets reads at a glance.
"""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from circuitflow import nodes
from circuitflow.outputs import save_figure
from circuitflow.tables import read_table, write_table
from circuitflow.stage import Stage

TOP_EDGES_SHOWN = 5


def _as_list(paths: str | list[str]) -> list[str]:
    return [paths] if isinstance(paths, str) else list(paths)


def accuracy_table(runs: list[dict], clean_paths: list[str]) -> pd.DataFrame:
    rows = []
    for run, path in zip(runs, clean_paths):
        correct = read_table(path, columns=["correct"])["correct"]
        rows.append({**run, "n_examples": len(correct), "n_correct": int(correct.sum()),
                     "clean_accuracy": float(correct.mean()) if len(correct) else 0.0})
    return pd.DataFrame(rows)


def useful_nodes_table(runs: list[dict], useful_paths: list[str]) -> pd.DataFrame:
    """Per run and useful node, in model order: at how many positions it is useful."""
    rows = []
    for run, path in zip(runs, useful_paths):
        with open(path) as f:
            listed = [nodes.from_quanta(entry)[0] for entry in json.load(f)]
        for name in sorted(set(listed), key=nodes.sort_key):
            node = nodes.parse(name)
            rows.append({**run, "node": name, "layer": node.layer, "head": node.head,
                         "n_useful": listed.count(name)})
    columns = ["model", "dataset", "node", "layer", "head", "n_useful"]
    return pd.DataFrame(rows, columns=columns).astype({"layer": "Int32", "head": "Int32"})

def top_edges_table(edge_runs: list[dict], top_edge_paths: list[str]) -> pd.DataFrame:
    frames = []
    for run, path in zip(edge_runs, top_edge_paths):
        edges = read_table(path, columns=["upstream", "downstream", "score", "rank"])
        edges = edges.nsmallest(TOP_EDGES_SHOWN, "rank")
        frames.append(edges.assign(**run)[[*run, "rank", "upstream", "downstream", "score"]])
    return pd.concat(frames, ignore_index=True)


def comparison_figure(accuracy: pd.DataFrame, useful: pd.DataFrame, edges: pd.DataFrame,
                      title: str):
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    labels = accuracy["model"] + " " + accuracy["dataset"]

    ax = axes[0]
    ax.bar(labels, 100 * accuracy["clean_accuracy"], color="tab:blue")
    for x, (pct, n) in enumerate(zip(100 * accuracy["clean_accuracy"], accuracy["n_examples"])):
        ax.text(x, pct + 1, f"{pct:.0f}% of {n}", ha="center", fontsize=8)
    ax.set(ylim=(0, 110), ylabel="examples answered exactly (%)", title="Clean accuracy")
    ax.tick_params(axis="x", rotation=45)

    ax = axes[1]
    for (model, dataset), group in useful.groupby(["model", "dataset"]):
        per_layer = group.groupby("layer")["n_useful"].sum()
        ax.plot(per_layer.index, per_layer.values, marker="o", label=f"{model} {dataset}")
    ax.set(xlabel="layer", ylabel="useful (node, position) pairs",
           title="Useful nodes per layer (node ablation)")
    if len(useful):
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)

    ax = axes[2]
    edges = edges.assign(
        run=edges["model"] + " " + edges["dataset"] + " " + edges["feature"],
        edge=edges["upstream"] + " → " + edges["downstream"],
    )
    grid = edges.pivot_table(index="run", columns="edge", values="score", aggfunc="first")
    # Scores of different features differ in scale: colour each row relative to its own largest.
    relative = grid.div(grid.abs().max(axis=1).replace(0, 1), axis=0)
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#eeeeee")
    image = ax.imshow(relative.values, cmap=cmap, vmin=-1, vmax=1, aspect="auto")
    for (row, col), score in np.ndenumerate(grid.values):
        if not np.isnan(score):
            ax.text(col, row, f"{score:.2g}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
    ax.set_title(f"Top {TOP_EDGES_SHOWN} EAP edges per feature (grey: not in that run's top)")
    fig.colorbar(image, ax=ax, label="score / largest |score| of the run (blue: clean answer)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def run_stage(params: dict, clean, useful, top_edges, accuracy_out: str, useful_out: str,
              edges_out: str, plot: str) -> None:
    runs = [{"model": m, "dataset": c} for m, c in params["runs"]]
    edge_runs = [{"model": m, "dataset": c, "feature": f} for m, c, f in params["edge_runs"]]
    accuracy = accuracy_table(runs, _as_list(clean))
    useful_nodes = useful_nodes_table(runs, _as_list(useful))
    edges = top_edges_table(edge_runs, _as_list(top_edges))
    write_table(accuracy, accuracy_out)
    write_table(useful_nodes, useful_out)
    write_table(edges, edges_out)
    figure = comparison_figure(accuracy, useful_nodes, edges, "circuitflow sweep: models × command sets")
    save_figure(figure, plot, dpi=params["plots"]["dpi"])


STAGE = Stage(
    "summary", run_stage, ("clean", "useful", "top_edges"), ("accuracy_out", "useful_out", "edges_out", "plot"),
    reads=("plots",), job=("runs", "edge_runs"), many=("clean", "useful", "top_edges"),
)
