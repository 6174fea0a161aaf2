"""Stage useful-nodes: the nodes whose ablation changes the answer often enough to matter.

Kept apart from the ablation itself so that a new ``ablation.useful_threshold`` reruns only
this list and the plots drawn from it.
"""

from __future__ import annotations

import json

import pandas as pd

from circuitflow import nodes
from circuitflow.outputs import write_text
from circuitflow.tables import read_table
from circuitflow.stage import Stage

SUMMARY_COLUMNS = ["node", "layer", "head", "position", "fail_rate"]


def useful_nodes(summary: pd.DataFrame, threshold: float) -> list[dict]:
    """Nodes (per position) failing more than ``threshold`` % of the time, in QuantaMechInterp's
    node-list format, ordered by position, layer, heads before the MLP, head."""
    useful = summary[summary["fail_rate"] > threshold]
    useful = useful.sort_values(["position", "layer", "head"], na_position="last")
    return [
        nodes.to_quanta(row.node, row.position, [f"Fail%:{round(row.fail_rate)}"])
        for row in useful.itertuples()
    ]


def run_stage(params: dict, summary: str, out: str) -> None:
    table = read_table(summary, columns=SUMMARY_COLUMNS)
    listed = useful_nodes(table, params["ablation"]["useful_threshold"])
    write_text(json.dumps(listed, indent=1) + "\n", out)


STAGE = Stage("useful-nodes", run_stage, ("summary",), ("out",), reads=("ablation.useful_threshold",))
