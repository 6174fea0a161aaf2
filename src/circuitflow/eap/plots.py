"""Stage eap-plots: the Sankey diagram of an EAP run's top edges (``circuitflow.eap.sankey``)
and its circuit faithfulness curve, with MIB's CPR and CMD and the random circuits' band."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import FuncFormatter

from circuitflow.eap.diagnostics import ill_conditioned_reason
from circuitflow.eap.sankey import sankey_figure, sankey_png_figure
from circuitflow.errors import JsonFileError
from circuitflow.json_files import read_json
from circuitflow.outputs import save_figure, save_interactive
from circuitflow.stage import Stage
from circuitflow.tables import read_table

TOP_EDGE_COLUMNS = ["upstream", "downstream", "score", "rank", "in_top_every_batch"]
FAITHFULNESS_COLUMNS = ["circuit", "draw", "n_edges_in_circuit", "n_edges_total", "faithfulness"]
SUMMARY_COLUMNS = ["circuit", "ranking", "n_curves", "cpr", "cmd", "cpr_std", "cmd_std"]


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


def run_stage(
    params: dict, top_edges: str, faithfulness: str, faithfulness_summary: str,
    results_json: str, sankey_interactive: str, sankey_png: str, faithfulness_png: str,
) -> None:
    edges = read_table(top_edges, columns=TOP_EDGE_COLUMNS)
    curve = read_table(faithfulness, columns=FAITHFULNESS_COLUMNS)
    summary = read_table(faithfulness_summary, columns=SUMMARY_COLUMNS)
    results = read_json(results_json)
    warning = ill_conditioned_reason(results, results_json)
    n_pairs = results.get("metadata", {}).get("n_pairs")
    if not isinstance(n_pairs, int):
        raise JsonFileError(f"{results_json}: no metadata.n_pairs; run rule eap again to rebuild it")
    about = f"{params['model']} / {params['dataset']} / {params['feature']} ({n_pairs} pairs)"
    sankey_title = f"EAP top edges: {about}" + (
        " (ILL-CONDITIONED: see eap_results.json)" if warning else ""
    )
    dpi = params["plots"]["dpi"]
    save_interactive(sankey_figure(edges, sankey_title), sankey_interactive)
    save_figure(sankey_png_figure(edges, sankey_title), sankey_png, dpi=dpi)
    save_figure(
        faithfulness_figure(curve, summary, f"Circuit faithfulness: {about}", warning),
        faithfulness_png, dpi=dpi,
    )


STAGE = Stage(
    "eap-plots", run_stage, ("top_edges", "faithfulness", "faithfulness_summary", "results_json"),
    ("sankey_interactive", "sankey_png", "faithfulness_png"),
    reads=("plots",), job=("model", "dataset", "feature"),
)
