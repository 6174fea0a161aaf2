"""Stage node-ablation: which attention heads and MLPs the model needs, at which positions.

One node (a head's output or an MLP's output) is replaced at one position by its mean, zero or
the output of another example (config ``ablation.method``), for every node, position and
selected example. Nodes whose fail rate exceeds ``ablation.useful_threshold`` are written as a
QuantaMechInterp useful-node list.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from circuitflow.ablation.engine import engine_for_stage
from circuitflow.ablation.summary import detail_table, summarize
from circuitflow.outputs import write_text
from circuitflow.tables import write_table

NODE_KEYS = ["layer", "component", "head"]


def node_detail(engine, result) -> pd.DataFrame:
    layers, heads = engine.nodes()
    table = detail_table(engine.examples, result)
    head = heads[result.node]
    table.insert(1, "layer", layers[result.node].astype(np.int32))
    table.insert(2, "component", np.where(head >= 0, "head", "mlp"))
    table.insert(3, "head", head.astype(np.int32))
    return table.sort_values(["example_id", *NODE_KEYS, "position"], ignore_index=True)


def useful_nodes(summary: pd.DataFrame, threshold: float) -> list[dict]:
    """Nodes (per position) failing more than ``threshold`` % of the time, in QuantaMechInterp's
    node-list format, ordered by position, layer, heads before the MLP, head."""
    useful = summary[summary["fail_rate"] > threshold]
    useful = useful.sort_values(["position", "layer", "component", "head"])
    return [
        {
            "position": int(row.position),
            "layer": int(row.layer),
            "is_head": row.component == "head",
            "num": max(int(row.head), 0),
            "tags": [f"Fail%:{round(row.fail_rate)}"],
        }
        for row in useful.itertuples()
    ]


def run_stage(
    params: dict, clean: str, detail: str, summary: str, by_role: str, useful: str
) -> None:
    settings = params["ablation"]
    engine = engine_for_stage(params, clean)
    table = node_detail(engine, engine.ablate_nodes(settings["method"], settings["seed"]))
    per_position = summarize(table, [*NODE_KEYS, "position"])
    write_table(table, detail)
    write_table(per_position, summary)
    write_table(summarize(table, [*NODE_KEYS, "role"]), by_role)
    nodes = useful_nodes(per_position, settings["useful_threshold"])
    write_text(json.dumps(nodes, indent=1) + "\n", useful)
