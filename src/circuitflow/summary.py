"""Stage summary: tables and one figure comparing every model and dataset of a sweep.

Clean accuracy, useful nodes per layer (from the node ablation), the strongest edges per EAP
feature (with whether the EAP run is ill-conditioned, and why), and which nodes greedy pruning,
node ablation and EAP each pick, side by side, so a sweep over models and datasets reads at a
glance.
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from circuitflow import nodes
from circuitflow.eap.diagnostics import ill_conditioned_reason
from circuitflow.json_files import read_json
from circuitflow.outputs import save_figure
from circuitflow.stage import Stage
from circuitflow.tables import read_table, write_table

TOP_EDGES_SHOWN = 5
EDGE_COLUMNS = ["rank", "upstream", "downstream", "score", "ill_conditioned",
                "ill_conditioned_reason"]


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


def top_edges_table(edge_runs: list[dict], top_edge_paths: list[str],
                    results_paths: list[str]) -> pd.DataFrame:
    """The strongest edges of each EAP run, each row saying whether the run's eap_results.json
    marks it ill-conditioned and why (null when it is not)."""
    frames = []
    for run, path, results in zip(edge_runs, top_edge_paths, results_paths, strict=True):
        edges = read_table(path, columns=["upstream", "downstream", "score", "rank"])
        edges = edges.nsmallest(TOP_EDGES_SHOWN, "rank")
        reason = ill_conditioned_reason(read_json(results), results)
        frames.append(edges.assign(**run, ill_conditioned=reason is not None,
                                   ill_conditioned_reason=reason)[[*run, *EDGE_COLUMNS]])
    return pd.concat(frames, ignore_index=True).astype({"ill_conditioned_reason": "string"})


def text_colour(rgba) -> str:
    """White or black, whichever contrasts more with a cell of colour ``rgba``: the two contrast
    equally where the cell's relative luminance (WCAG's) is 0.179."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "white" if luminance < 0.179 else "black"


def run_label(row) -> str:
    flag = " (ill-conditioned)" if row["ill_conditioned"] else ""
    return f"{row['model']} {row['dataset']} {row['feature']}{flag}"


def comparison_figure(accuracy: pd.DataFrame, useful: pd.DataFrame, edges: pd.DataFrame,
                      title: str):
    edges = edges.assign(
        run=edges.apply(run_label, axis=1),
        edge=edges["upstream"] + " → " + edges["downstream"],
    )
    grid = edges.pivot_table(index="run", columns="edge", values="score", aggfunc="first")
    grid = grid.reindex(edges["run"].unique())  # the sweep's order, not the alphabet's
    # Inches: room for a printed number in every heatmap cell.
    heatmap_width, height = max(7, 0.45 * grid.shape[1]), max(5.5, 2.5 + 0.4 * grid.shape[0])
    fig, axes = plt.subplots(1, 3, figsize=(14 + heatmap_width, height),
                             gridspec_kw={"width_ratios": [5, 5, heatmap_width]})
    labels = accuracy["model"] + " " + accuracy["dataset"]

    ax = axes[0]
    ax.bar(labels, 100 * accuracy["clean_accuracy"], color="tab:blue")
    for x, (pct, n) in enumerate(zip(100 * accuracy["clean_accuracy"], accuracy["n_examples"])):
        ax.text(x, pct + 1, f"{pct:.0f}%\nof {n}", ha="center", va="bottom", fontsize=8)
    ax.set(ylim=(0, 118), ylabel="examples answered exactly (%)", title="Clean accuracy")
    ax.tick_params(axis="x", rotation=45)

    ax = axes[1]
    for (model, dataset), group in useful.groupby(["model", "dataset"]):
        ax.plot(group["layer"], group["n_useful_heads"] + group["n_useful_mlps"], marker="o",
                label=f"{model} {dataset}")
    without = [label for label in labels
               if label not in set(useful["model"] + " " + useful["dataset"])]
    ax.set(xlabel="layer", ylabel="useful nodes (heads and MLPs)",
           title="Useful nodes per layer (node ablation)"
           + ("\n" + textwrap.fill(f"none in: {', '.join(without)}", 60) if without else ""))
    ax.set_ylim(bottom=0)
    ax.yaxis.get_major_locator().set_params(integer=True)
    if len(useful):
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)

    ax = axes[2]
    # Scores of different features differ in scale: each row is relative to its own largest, and
    # the cell prints that relative value, the one its colour encodes.
    peak = grid.abs().max(axis=1)
    relative = grid.div(peak.replace(0, 1), axis=0)
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#eeeeee")
    norm = plt.Normalize(vmin=-1, vmax=1)
    image = ax.imshow(relative.values, cmap=cmap, norm=norm, aspect="auto")
    for (row, col), value in np.ndenumerate(relative.values):
        if not np.isnan(value):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color=text_colour(cmap(norm(value))))
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(grid.shape[0]),
                  [f"{run}\nlargest |score| {p:.3g}" for run, p in peak.items()], fontsize=8)
    ax.set_title(f"Top {TOP_EDGES_SHOWN} EAP edges of each of {grid.shape[0]} runs: "
                 f"{grid.shape[1]} distinct edges\n(grey: not in that run's top {TOP_EDGES_SHOWN})")
    fig.colorbar(image, ax=ax, label="score / the run's largest |score|, printed in each cell\n"
                                     "(blue: carries the clean answer, red: works against it)")
    fig.suptitle(title)
    fig.tight_layout()
    flagged = edges[edges["ill_conditioned"]].drop_duplicates("run")
    if len(flagged):
        notes = "; ".join(f"{run}: {reason}" for run, reason in
                          zip(flagged["run"], flagged["ill_conditioned_reason"]))
        fig.text(0.01, 0, textwrap.fill(
            f"Ill-conditioned EAP runs, whose scores are unreliable: {notes}.", 200
        ), ha="left", va="top", fontsize=8, color="darkred")
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


def run_stage(params: dict, clean, useful, top_edges, eap_results, circuits, accuracy_out: str,
              useful_out: str, edges_out: str, overlap_out: str, plot: str) -> None:
    runs = [{"model": m, "dataset": d} for m, d in params["runs"]]
    edge_runs = [{"model": m, "dataset": d, "feature": f} for m, d, f in params["edge_runs"]]
    pair_runs = [{"model": m, "dataset": d} for m, d in params["pair_runs"]]
    accuracy = accuracy_table(runs, clean)
    useful_nodes = useful_nodes_table(runs, useful)
    edges = top_edges_table(edge_runs, top_edges, eap_results)
    write_table(accuracy, accuracy_out)
    write_table(useful_nodes, useful_out)
    write_table(edges, edges_out)
    write_table(node_overlap_table(pair_runs, circuits, runs, useful, edges), overlap_out)
    figure = comparison_figure(accuracy, useful_nodes, edges, "circuitflow sweep: models × datasets")
    save_figure(figure, plot, dpi=params["plots"]["dpi"])


STAGE = Stage(
    "summary", run_stage, ("clean", "useful", "top_edges", "eap_results", "circuits"),
    ("accuracy_out", "useful_out", "edges_out", "overlap_out", "plot"),
    reads=("plots",), job=("runs", "edge_runs", "pair_runs"),
    many=("clean", "useful", "top_edges", "eap_results", "circuits"),
)
