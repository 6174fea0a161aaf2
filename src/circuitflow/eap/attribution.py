"""Edge attribution patching (EAP) and its integrated-gradients variant (EAP-IG).

Sign convention (the notebook's): score(u → r) = Σ_batch,pos (a_u(clean) − a_u(corrupt)) ·
∂metric/∂(input of r), the gradient taken on the clean run. A positive score means the edge
carries the clean answer; ranking uses |score|. The metric is the notebook's normalised logit
difference (mean logit diff − corrupt) / (clean − corrupt), clean and corrupt averaged over all
batches; its gradient is the raw one divided by that constant, so scores are computed raw and
divided once at the end.

EAP-IG averages the gradient over ``ig_steps`` passes whose embeddings are
corrupt + k/steps · (clean − corrupt), k = 1..steps; with one step that is the clean pass: EAP.
Each batch costs one corrupt forward pass, then one forward and one backward pass per step; the
scores of a layer's q (k, v) receivers, or of an MLP or the logits, are one matrix product over
all their upstream nodes, inside the backward pass.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from circuitflow.batching import Batches
from circuitflow.device import resolve_device
from circuitflow.eap.batches import PairBatch, logit_diff, pair_batches, read_pairs
from circuitflow.eap.bridge import EdgeModel
from circuitflow.errors import CircuitflowError
from circuitflow.models.loader import load_model
from circuitflow.outputs import write_text
from circuitflow.tables import write_table
from circuitflow.stage import Only, Stage

log = logging.getLogger(__name__)


def attribute(model: EdgeModel, batch: PairBatch, ig_steps: int = 1):
    """Raw scores [n_upstream, n_receivers] of one batch (zero where no edge exists), for the metric
    mean logit diff, and the batch's mean clean and corrupt logit differences."""
    g = model.graph
    corrupt = model.upstream_buffer(batch.corrupt)
    with torch.no_grad():
        corrupt_diff = logit_diff(model.run(batch.corrupt, record=corrupt), batch).mean().item()
    delta = model.upstream_buffer(batch.clean)
    scores = torch.zeros(len(g.upstream), len(g.receivers), dtype=delta.dtype, device=delta.device)

    def accumulate(cols: slice, grad: torch.Tensor) -> None:
        # One matrix product for all of a group's edges: [n, batch·pos·d] @ [batch·pos·d, r].
        n = int(g.n_upstream_before[cols.start])
        grad = grad.permute(0, 1, 3, 2).reshape(-1, grad.shape[2])
        scores[:n, cols] += delta[:n].flatten(1) @ grad

    corrupt_input = corrupt[0]
    # The clean pass (k = steps) comes first: it records a_clean, which every step's scores use.
    for k in range(ig_steps, 0, -1):
        if k == ig_steps:
            logits = model.run(batch.clean, record=delta, on_grad=accumulate)
            delta -= corrupt
            clean_diff = logit_diff(logits.detach(), batch).mean().item()
        else:
            alpha = k / ig_steps
            logits = model.run(
                batch.clean, on_grad=accumulate,
                input_fn=lambda x: corrupt_input + alpha * (x - corrupt_input),
            )
        logit_diff(logits, batch).mean().backward()
    return scores / ig_steps, clean_diff, corrupt_diff


def attribute_in_parts(model: EdgeModel, batch: PairBatch, ig_steps: int, parts: Batches):
    """``attribute`` over slices of the batch's rows, as many as the GPU needs (``parts`` halves
    on out-of-memory). The metric is a mean over rows, so the batch's scores and logit
    differences are the row-weighted means of its slices'."""
    results = parts.map(range(len(batch)), lambda rows: (
        len(rows), attribute(model, batch.rows(slice(rows.start, rows.stop)), ig_steps)
    ))
    share = [n / len(batch) for n, _ in results]
    scores = sum(w * scores for w, (_, (scores, _, _)) in zip(share, results))
    clean = sum(w * clean for w, (_, (_, clean, _)) in zip(share, results))
    corrupt = sum(w * corrupt for w, (_, (_, _, corrupt)) in zip(share, results))
    return scores, clean, corrupt


def top_edge_table(upstream: list[str], downstream: list[str], scores: np.ndarray, top_n: int):
    """The ``top_n`` edges by |mean score over batches|, plus the edges in the top ``top_n`` of
    every batch; ``scores`` is [n_batches, n_edges]. Sorted by ``rank`` (1 = largest |mean|)."""
    mean = scores.mean(axis=0)
    order = np.argsort(-np.abs(mean), kind="stable")
    rank = np.empty(len(mean), dtype=np.int64)
    rank[order] = np.arange(1, len(mean) + 1)
    in_top = np.zeros(len(mean), dtype=np.int64)
    for row in scores:
        in_top[np.argsort(-np.abs(row), kind="stable")[:top_n]] += 1
    every = in_top == len(scores)
    keep = np.flatnonzero((rank <= top_n) | every)
    table = pd.DataFrame({
        "upstream": np.asarray(upstream, dtype=object)[keep],
        "downstream": np.asarray(downstream, dtype=object)[keep],
        "score": mean[keep],
        "rank": rank[keep],
        "n_batches_in_top": in_top[keep],
        "in_top_every_batch": every[keep],
    })
    return table.sort_values("rank", ignore_index=True)


def run_stage(params: dict, pairs: str, edges: str, top_edges: str, results_json: str) -> None:
    settings = params["eap"]
    device = resolve_device(params["device"])
    loaded = load_model(params["model"], device)
    model = EdgeModel(loaded.model, loaded.tokenizer)
    table = read_pairs(pairs)
    batches = pair_batches(table, loaded.tokenizer.pad_token_id, device)
    steps = settings["ig_steps"] if settings["method"] == "eap-ig" else 1
    log.info("%s on %d batches of %s", settings["method"], len(batches), loaded.name)

    parts = Batches(max(map(len, batches)))
    per_batch = [
        attribute_in_parts(model, batch, steps, parts)
        for batch in tqdm(batches, desc=settings["method"])
    ]
    clean_diff = float(np.mean([clean for _, clean, _ in per_batch]))
    corrupt_diff = float(np.mean([corrupt for _, _, corrupt in per_batch]))
    if clean_diff == corrupt_diff:
        raise CircuitflowError(
            f"{pairs}: clean and corrupt prompts give the same mean logit difference "
            f"({clean_diff}); the normalised metric is undefined"
        )
    up, down = model.graph.edges
    scores = torch.stack([s[up, down] for s, _, _ in per_batch]).cpu().double().numpy()
    scores /= clean_diff - corrupt_diff
    up_names, down_names = model.graph.edge_names()
    batch_ids = sorted(table["batch"].unique())
    write_table(pd.DataFrame({
        "batch": np.repeat(batch_ids, len(up_names)),
        "upstream": up_names * len(batch_ids),
        "downstream": down_names * len(batch_ids),
        "score": scores.reshape(-1),
    }), edges)
    top = top_edge_table(up_names, down_names, scores, settings["top_n"])
    write_table(top, top_edges)

    def normalised(diff: float) -> float:
        return (diff - corrupt_diff) / (clean_diff - corrupt_diff)

    cfg = model.bridge.cfg
    results = {
        "metadata": {
            "source": "circuitflow",
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "model": loaded.name,
            "dataset": params["dataset"],
            "hf_model": params["model"].get("id") or params["model"].get("path"),
            "feature_name": params["feature"],
            "method": settings["method"],
            "ig_steps": steps,
            "batch_size": int(table.groupby("batch").size().max()),
            "n_batches": len(batches),
            "n_positions": max(b.clean.shape[1] for b in batches),
            "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads,
        },
        "parameters": {
            "top_n_edges": settings["top_n"],
            "clean_logit_diff": clean_diff,
            "corrupt_logit_diff": corrupt_diff,
            "clean_metric": float(np.mean([normalised(c) for _, c, _ in per_batch])),
            "corrupt_metric": float(np.mean([normalised(c) for _, _, c in per_batch])),
        },
        "edges": [
            {"from_edge": row.upstream, "to_edge": row.downstream, "score": float(row.score)}
            for row in top.itertuples()
        ],
    }
    write_text(json.dumps(results, indent=2), results_json)


STAGE = Stage(
    "eap", run_stage, ("pairs",), ("edges", "top_edges", "results_json"),
    reads=(
        "model", "device", "eap.method", Only("eap.ig_steps", when=("eap.method", "eap-ig")),
        "eap.top_n",
    ),
    job=("dataset", "feature"),
)
