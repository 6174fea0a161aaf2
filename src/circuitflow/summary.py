"""Stage summary: tables and one figure comparing every model and dataset of a sweep.

Clean accuracy, useful nodes per layer (from the node ablation), the strongest edges per EAP
feature, and which nodes greedy pruning, node ablation and EAP each pick, side by side, so a
sweep over models and datasets reads at a glance.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from circuitflow import nodes
from circuitflow.json_files import read_json
from circuitflow.outputs import save_figure
from circuitflow.stage import Stage
from circuitflow.tables import read_table, write_table

TOP_EDGES_SHOWN = 5


def accuracy_table(runs: list[dict], clean_paths: list[str]) -> pd.DataFrame:
    rows = []
    for run, path in zip(runs, clean_paths):
        correct = read_table(path, columns=["correct"])["correct"]
        rows.append({**run, "n_examples": len(correct), "n_correct": int(correct.sum()),
                     "clean_accuracy": float(correct.mean()) if len(correct) else 0.0})
    return pd.DataFrame(rows)


USEFUL_COLUMNS = ["model", "dataset", "layer", "n_useful_heads", "n_useful_mlps"]


def useful_nodes_table(runs: list[dict], useful_paths: list[str]) -> pd.DataFrame:
    """Per run and layer that has a useful node: how many distinct heads and MLPs are useful
    (at one position or more)."""
    rows = []
    for run, path in zip(runs, useful_paths):
        useful = {nodes.parse(nodes.from_quanta(entry)[0]) for entry in read_json(path)}
        for layer in sorted({node.layer for node in useful}):
            in_layer = [node for node in useful if node.layer == layer]
            rows.append({**run, "layer": layer,
                         "n_useful_heads": sum(node.is_head for node in in_layer),
                         "n_useful_mlps": sum(node.is_mlp for node in in_layer)})
    counts = {"layer": "int32", "n_useful_heads": "int32", "n_useful_mlps": "int32"}
    return pd.DataFrame(rows, columns=USEFUL_COLUMNS).astype(counts)


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
        ax.plot(group["layer"], group["n_useful_heads"] + group["n_useful_mlps"], marker="o",
                label=f"{model} {dataset}")
    ax.set(xlabel="layer", ylabel="useful nodes (heads and MLPs)",
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


OVERLAP_COLUMNS = ["model", "dataset", "node", "layer", "head", "in_pruned_circuit", "useful",
                   "in_top_edges"]


def node_overlap_table(pair_runs: list[dict], circuit_paths: list[str], runs: list[dict],
                       useful_paths: list[str], top_edges: pd.DataFrame) -> pd.DataFrame:
    """Per run with a pruned circuit, every head or MLP that pruning keeps, node ablation finds
    useful, or a top EAP edge (of any feature) starts or ends at."""
    useful_of = {
        (run["model"], run["dataset"]): {nodes.from_quanta(e)[0] for e in read_json(path)}
        for run, path in zip(runs, useful_paths)
    }
    frames = []
    for run, path in zip(pair_runs, circuit_paths):
        kept = set(read_json(path)["nodes"])
        useful = useful_of.get((run["model"], run["dataset"]), set())
        mine = top_edges[(top_edges["model"] == run["model"]) & (top_edges["dataset"] == run["dataset"])]
        ends = {nodes.writer_of(n) for n in (*mine["upstream"], *mine["downstream"])}
        edged = {n for n in ends if n not in (nodes.INPUT, nodes.LOGITS)}
        names = sorted(kept | useful | edged, key=nodes.sort_key)
        frame = nodes.columns(names)
        frames.append(frame.assign(
            **run, in_pruned_circuit=frame["node"].isin(kept), useful=frame["node"].isin(useful),
            in_top_edges=frame["node"].isin(edged),
        ))
    if not frames:
        return pd.DataFrame(columns=OVERLAP_COLUMNS)
    return pd.concat(frames, ignore_index=True)[OVERLAP_COLUMNS]


def run_stage(params: dict, clean, useful, top_edges, circuits, accuracy_out: str,
              useful_out: str, edges_out: str, overlap_out: str, plot: str) -> None:
    runs = [{"model": m, "dataset": d} for m, d in params["runs"]]
    edge_runs = [{"model": m, "dataset": d, "feature": f} for m, d, f in params["edge_runs"]]
    pair_runs = [{"model": m, "dataset": d} for m, d in params["pair_runs"]]
    accuracy = accuracy_table(runs, clean)
    useful_nodes = useful_nodes_table(runs, useful)
    edges = top_edges_table(edge_runs, top_edges)
    write_table(accuracy, accuracy_out)
    write_table(useful_nodes, useful_out)
    write_table(edges, edges_out)
    write_table(node_overlap_table(pair_runs, circuits, runs, useful, edges), overlap_out)
    figure = comparison_figure(accuracy, useful_nodes, edges, "circuitflow sweep: models × datasets")
    save_figure(figure, plot, dpi=params["plots"]["dpi"])


STAGE = Stage(
    "summary", run_stage, ("clean", "useful", "top_edges", "circuits"),
    ("accuracy_out", "useful_out", "edges_out", "overlap_out", "plot"),
    reads=("plots",), job=("runs", "edge_runs", "pair_runs"),
    many=("clean", "useful", "top_edges", "circuits"),
)
