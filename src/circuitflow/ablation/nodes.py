"""Stage node-ablation: which attention heads and MLPs the model needs, at which positions.

One node (a head's output or an MLP's output) is replaced at one position by its mean, zero or
the output of another example (config ``ablation.method``), for every node, position and
selected example (rule ``useful_nodes`` then lists the nodes that matter).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuitflow.ablation.engine import engine_for_stage
from circuitflow.ablation.summary import detail_table, summarize
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


def run_stage(
    params: dict, clean: str, detail: str, summary: str, by_role: str
) -> None:
    settings = params["ablation"]
    engine = engine_for_stage(params, clean)
    table = node_detail(engine, engine.ablate_nodes(settings["method"], settings["seed"]))
    per_position = summarize(table, [*NODE_KEYS, "position"])
    write_table(table, detail)
    write_table(per_position, summary)
    write_table(summarize(table, [*NODE_KEYS, "role"]), by_role)
