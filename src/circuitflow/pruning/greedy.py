"""Stage greedy-pruning: the smallest set of heads (and MLPs) found greedily that keeps the
model's logit difference within T% on the clean/corrupt pairs.

Every node outside the circuit is mean-ablated over the reference prompts (config
``pruning.reference``: the corrupt prompts, the clean ones, or zero); a node inside keeps its
output at its positions (``pruning.keep_positions``). Nodes are visited last layer first
(``pruning.order``) and dropped while 100 - score < T (``pruning.threshold``), in speculative
chains of ``pruning.chain`` candidates per batched evaluation.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd

from circuitflow import nodes as node_names
from circuitflow.ablation.layout import layout_of
from circuitflow.device import resolve_device
from circuitflow.eap.batches import pair_batches, read_pairs
from circuitflow.errors import CircuitflowError, ConfigError
from circuitflow.models.loader import load_model
from circuitflow.outputs import save_figure, write_text
from circuitflow.pruning.intervention import CircuitRunner, prunable_nodes
from circuitflow.pruning.plots import kept_heads_figure, score_curve_figure
from circuitflow.pruning.positions import keep_positions
from circuitflow.pruning.search import ORDERS, greedy_prune, visiting_order
from circuitflow.stage import Stage
from circuitflow.tables import write_table

log = logging.getLogger(__name__)

REFERENCES = ("corrupt", "clean", "zero")
# Candidates per batched evaluation when pruning.chain is 0. A CPU's cost grows with the rows,
# so every candidate scored on a wrong assumption costs; a GPU runs many rows for the price of
# a few.
AUTO_CHAIN = {"cpu": 2, "cuda": 16}


def chain_length(setting: int, device_type: str) -> int:
    return setting or AUTO_CHAIN.get(device_type, AUTO_CHAIN["cpu"])


def _choice(settings, key: str, allowed: tuple[str, ...]) -> str:
    value = settings[key]
    if value not in allowed:
        raise ConfigError(
            f"config key 'pruning.{key}': expected one of {', '.join(allowed)}, got {value!r}"
        )
    return value


def steps_table(names: list[str], result) -> pd.DataFrame:
    visited = node_names.columns([names[s.node] for s in result.steps])
    return pd.DataFrame({
        "step": np.arange(len(result.steps), dtype=np.int64),
        "node": visited["node"], "layer": visited["layer"], "head": visited["head"],
        "score_without": np.array([s.score_without for s in result.steps], dtype=np.float64),
        "removed": np.array([s.removed for s in result.steps], dtype=bool),
    })


def run_stage(
    params: dict, pairs: str, steps: str, circuit: str, score_curve: str, kept_heads: str
) -> None:
    settings = params["pruning"]
    reference = _choice(settings, "reference", REFERENCES)
    order = _choice(settings, "order", ORDERS)
    threshold, include_mlps = float(settings["threshold"]), bool(settings["include_mlps"])
    spec = {key: list(roles) for key, roles in settings["keep_positions"].items()}
    device = resolve_device(params["device"])
    chain = chain_length(settings["chain"], device.type)
    loaded = load_model(params["model"], device)

    table = read_pairs(pairs).sort_values("pair_id", ignore_index=True)
    # All pairs in one batch: the score is the mean over every pair.
    batch = pair_batches(table.assign(batch=0), loaded.tokenizer.pad_token_id, device)[0]
    names = prunable_nodes(layout_of(loaded.model), include_mlps)
    roles = list(table["token_roles"]) if "token_roles" in table.columns else None
    keep = keep_positions(spec, names, (batch.last + 1).tolist(), roles, batch.clean.shape[1], pairs)
    reference_tokens = {"corrupt": batch.corrupt, "clean": batch.clean, "zero": None}[reference]

    with CircuitRunner(
        loaded.model, batch, keep, reference_tokens, include_mlps, settings["batch_size"]
    ) as runner:
        full = runner.full_metric
        if full == 0 or not math.isfinite(full):
            raise CircuitflowError(
                f"{pairs}: the model's mean logit difference is {full}; a score relative to it "
                "is undefined"
            )
        if full < 0:
            log.warning("the model prefers the corrupt answers (mean logit difference %.4g): "
                        "scores are relative to a negative difference", full)

        def score(circuits, current):
            return 100 * runner.metrics(circuits, current).cpu() / full

        result = greedy_prune(
            score, len(names), visiting_order(names, order), threshold, chain, show_progress=True
        )

    kept = [name for name, keep_it in zip(names, result.circuit.tolist()) if keep_it]
    log.info("kept %d of %d nodes (score %.2f%%) in %d batched evaluations",
             len(kept), len(names), result.final_score, result.n_evaluations)
    table = steps_table(names, result)
    write_table(table, steps)
    model_name, dataset_name = params["model"]["name"], params["dataset"]
    write_text(json.dumps({
        "model": model_name, "dataset": dataset_name,
        "threshold": threshold,
        "score": result.final_score,
        "start_score": result.start_score,
        "full_metric": full,
        "n_pairs": len(batch),
        "n_nodes_before": len(names),
        "n_nodes_after": len(kept),
        "nodes": kept,
        "n_evaluations": result.n_evaluations,
        "settings": {
            "reference": reference, "keep_positions": spec, "order": order,
            "include_mlps": include_mlps, "chain": chain,
        },
    }, indent=1) + "\n", circuit)
    title = f"{model_name} / {dataset_name} ({len(batch)} pairs)"
    dpi = params["plots"]["dpi"]
    save_figure(score_curve_figure(table, threshold, result.start_score, title), score_curve, dpi)
    layout = runner.layout
    save_figure(kept_heads_figure(names, result.circuit.numpy(), layout.n_layers, layout.n_heads,
                                  title), kept_heads, dpi)


STAGE = Stage(
    "greedy-pruning", run_stage, ("pairs",), ("steps", "circuit", "score_curve", "kept_heads"),
    reads=(
        "model", "device", "pruning.threshold", "pruning.reference", "pruning.keep_positions",
        "pruning.order", "pruning.include_mlps", "pruning.chain", "pruning.batch_size",
        "plots.dpi",
    ),
    job=("dataset",),
)
