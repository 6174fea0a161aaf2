"""Stage node-ablation: which attention heads and MLPs the model needs, at which positions.

One node (a head's output or an MLP's output) is replaced at one position by its mean, zero or
the output of another example (config ``ablation.method``), for every node, position and
selected example (rule ``useful_nodes`` then lists the nodes that matter).
"""

from __future__ import annotations

import pandas as pd

from circuitflow import nodes
from circuitflow.ablation.engine import AblationResult
from circuitflow.ablation.replacement import by_method
from circuitflow.ablation.stage_engine import engine_for_stage
from circuitflow.ablation.summary import detail_table, summarize
from circuitflow.errors import ConfigError
from circuitflow.tables import write_table
from circuitflow.stage import Only, Stage

# Grouped in model order: by layer, then head (null, the MLP, last).
NODE_KEYS = ["layer", "head", "node"]


def ablate_each_node(engine, settings) -> AblationResult:
    if not len(engine.examples):
        return AblationResult.empty()  # the model answers none: nothing to ablate
    method = settings["method"]
    if method != "resample":
        return engine.ablate_each_node(by_method(method, engine))
    if len(engine.examples) < 2:
        why = ("ablation.n_examples is 1" if settings["n_examples"] < 2
               else "the model answers only one example correctly")
        raise ConfigError(
            f"config key 'ablation.method': resample takes a node's output from another "
            f"example, but {why}; set ablation.n_examples to 2 or more, or ablation.method "
            "to mean or zero"
        )
    return engine.ablate_each_node(by_method(method, engine, settings["seed"]))


def node_detail(engine, result: AblationResult) -> pd.DataFrame:
    table = detail_table(engine.examples, result)
    names = nodes.columns(engine.node_names).iloc[result.node_set].reset_index(drop=True)
    table = pd.concat([table[["example_id"]], names[NODE_KEYS], table.iloc[:, 1:]], axis=1)
    return table.sort_values(["example_id", *NODE_KEYS, "position"], ignore_index=True)


def run_stage(
    params: dict, clean: str, detail: str, summary: str, by_role: str
) -> None:
    engine = engine_for_stage(params, clean)
    table = node_detail(engine, ablate_each_node(engine, params["ablation"]))
    per_position = summarize(table, [*NODE_KEYS, "position"])
    write_table(table, detail)
    write_table(per_position, summary)
    write_table(summarize(table, [*NODE_KEYS, "role"]), by_role)


STAGE = Stage(
    "node-ablation", run_stage, ("clean",), ("detail", "summary", "by_role"),
    reads=(
        "model", "device", "ablation.n_examples", "ablation.batch_size", "ablation.method",
        Only("ablation.seed", when=("ablation.method", "resample")),
    ),
)
