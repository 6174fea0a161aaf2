"""Edge attribution patching (EAP) and its integrated-gradients variant (EAP-IG).

Sign convention (the notebook's): score(u → r) = Σ_batch,pos (a_u(clean) − a_u(corrupt)) ·
∂metric/∂(input of r), the gradient taken on the clean run. A positive score means the edge
carries the clean answer; ranking uses |score|. The metric is the notebook's normalised logit
difference (mean logit diff − corrupt) / (clean − corrupt), clean and corrupt averaged over all
batches; its gradient is the raw one divided by that constant, so scores are computed raw and
divided once at the end. That constant is the run's weak point: when the clean and corrupt
prompts give nearly the same logit difference (the corruption barely changes what the model
says), every score is divided by almost zero. The stage still computes, but marks the result
ill-conditioned (``conditioning``) in eap_results.json and top_edges.parquet.

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
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from circuitflow.batching import Batches
from circuitflow.device import resolve_device
from circuitflow.eap.batches import PairBatch, logit_diff, pair_batches, read_pairs
from circuitflow.eap.bridge import EdgeModel
from circuitflow.eap.graph_json import write_graph_json
from circuitflow.errors import CircuitflowError
from circuitflow.models.loader import load_model
from circuitflow.outputs import write_text
from circuitflow.tables import write_table
from circuitflow.stage import Only, Stage

log = logging.getLogger(__name__)


# "Most pairs": above this share of corrupt prompts answered with the clean token, the corruption
# does not change the model's answer and the result is ill-conditioned.
MOST = 0.5


class BatchScores(NamedTuple):
    scores: torch.Tensor  # raw [n_upstream, n_receivers], for the metric mean logit diff
    clean_diff: float  # mean logit difference on the clean prompts
    corrupt_diff: float  # ... on the corrupt prompts
    corrupt_says_clean: float  # share of corrupt prompts whose top next token is the clean answer


def attribute(model: EdgeModel, batch: PairBatch, ig_steps: int = 1) -> BatchScores:
    """One batch's raw scores (zero where no edge exists) and its clean and corrupt statistics."""
    g = model.graph
    corrupt = model.upstream_buffer(batch.corrupt)
    with torch.no_grad():
        final = model.run(batch.corrupt, batch.last, record=corrupt)
        corrupt_diff = logit_diff(final, batch).mean().item()
        says_clean = (final.argmax(-1) == batch.clean_answer).double().mean().item()
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
            final = model.run(batch.clean, batch.last, record=delta, on_grad=accumulate)
            delta -= corrupt
            clean_diff = logit_diff(final.detach(), batch).mean().item()
        else:
            alpha = k / ig_steps
            final = model.run(
                batch.clean, batch.last, on_grad=accumulate,
                input_fn=lambda x: corrupt_input + alpha * (x - corrupt_input),
            )
        logit_diff(final, batch).mean().backward()
    return BatchScores(scores / ig_steps, clean_diff, corrupt_diff, says_clean)


def attribute_in_parts(model: EdgeModel, batch: PairBatch, ig_steps: int, parts: Batches):
    """``attribute`` over slices of the batch's rows, as many as the GPU needs (``parts`` halves
    on out-of-memory). Every field is a mean over rows, so the batch's are the row-weighted
    means of its slices'."""
    results = parts.map(range(len(batch)), lambda rows: (
        len(rows), attribute(model, batch.rows(slice(rows.start, rows.stop)), ig_steps)
    ))
    share = [n / len(batch) for n, _ in results]
    fields = zip(*(part for _, part in results))
    return BatchScores(*(sum(w * value for w, value in zip(share, field)) for field in fields))


def conditioning(clean_diff: float, corrupt_diff: float, corrupt_says_clean: float,
                 min_logit_diff: float) -> dict:
    """The ``diagnostics`` of a run: whether its normalised metric is ill-conditioned, and why in
    words. It is when the clean and corrupt mean logit differences are less than
    ``min_logit_diff`` apart (the metric divides by that gap), or when most corrupt prompts are
    still answered with the clean token (the corruption does not change the answer)."""
    gap = clean_diff - corrupt_diff
    reasons = []
    if abs(gap) < min_logit_diff:
        reasons.append(
            f"the mean logit differences on clean and corrupt prompts ({clean_diff:.4g} and "
            f"{corrupt_diff:.4g}) are only {abs(gap):.3g} logits apart, less than "
            f"eap.min_logit_diff = {min_logit_diff:g}; scores and faithfulness divide by that gap"
        )
    if corrupt_says_clean > MOST:
        reasons.append(
            f"the model still answers {100 * corrupt_says_clean:.0f}% of the corrupt prompts with "
            "the clean token, so the corruption barely changes its answer"
        )
    return {
        "ill_conditioned": bool(reasons),
        "reason": "; ".join(reasons) or None,
        "clean_logit_diff": clean_diff,
        "corrupt_logit_diff": corrupt_diff,
        "logit_diff_gap": gap,
        "min_logit_diff": min_logit_diff,
        "corrupt_answered_clean_share": corrupt_says_clean,
    }


def edge_ranks(mean: np.ndarray) -> np.ndarray:
    """Rank of each edge by |mean score| (1 = largest; ties in edge order)."""
    rank = np.empty(len(mean), dtype=np.int64)
    rank[np.argsort(-np.abs(mean), kind="stable")] = np.arange(1, len(mean) + 1)
    return rank


def top_edge_table(upstream: list[str], downstream: list[str], scores: np.ndarray, top_n: int):
    """The ``top_n`` edges by |mean score over batches|, plus the edges in the top ``top_n`` of
    every batch; ``scores`` is [n_batches, n_edges]. Sorted by ``rank`` (1 = largest |mean|)."""
    mean = scores.mean(axis=0)
    rank = edge_ranks(mean)
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


def run_stage(
    params: dict, pairs: str, edges: str, top_edges: str, results_json: str, graph_json: str
) -> None:
    settings = params["eap"]
    device = resolve_device(params["device"])
    loaded = load_model(params["model"], device)
    model = EdgeModel(loaded.model, loaded.tokenizer)
    table = read_pairs(pairs)
    batches = pair_batches(table, loaded.tokenizer.pad_token_id, device)
    ig = settings["method"] == "eap-ig"
    steps = settings["ig_steps"] if ig else 1
    log.info("%s on %d batches of %s", settings["method"], len(batches), loaded.name)

    parts = Batches(max(map(len, batches)))
    per_batch = [
        attribute_in_parts(model, batch, steps, parts)
        for batch in tqdm(batches, desc=settings["method"])
    ]
    clean_diff = float(np.mean([b.clean_diff for b in per_batch]))
    corrupt_diff = float(np.mean([b.corrupt_diff for b in per_batch]))
    if clean_diff == corrupt_diff:
        raise CircuitflowError(
            f"{pairs}: clean and corrupt prompts give the same mean logit difference "
            f"({clean_diff}): the corruption changes nothing the metric sees, and the normalised "
            "metric is undefined; choose another feature"
        )
    diagnostics = conditioning(
        clean_diff, corrupt_diff, float(np.mean([b.corrupt_says_clean for b in per_batch])),
        settings["min_logit_diff"],
    )
    if diagnostics["ill_conditioned"]:
        log.warning("%s: ill-conditioned: %s", pairs, diagnostics["reason"])
    up, down = model.graph.edges
    scores = torch.stack([b.scores[up, down] for b in per_batch]).cpu().double().numpy()
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
    write_table(top.assign(ill_conditioned=diagnostics["ill_conditioned"]), top_edges)
    mean = scores.mean(axis=0)
    cfg = model.bridge.cfg
    write_graph_json(
        graph_json, model.graph, cfg.d_model, up_names, down_names, mean,
        edge_ranks(mean) <= settings["top_n"],
    )

    def normalised(diff: float) -> float:
        return (diff - corrupt_diff) / (clean_diff - corrupt_diff)

    results = {
        "metadata": {
            "source": "circuitflow",
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "model": loaded.name,
            "dataset": params["dataset"],
            "hf_model": params["model"].get("id") or params["model"].get("path"),
            "feature_name": params["feature"],
            "method": settings["method"],
            "ig_steps": steps if ig else None,  # plain EAP takes no steps
            "batch_size": int(table.groupby("batch").size().max()),
            "n_batches": len(batches),
            "n_pairs": len(table),
            "n_positions": max(b.clean.shape[1] for b in batches),
            "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads,
        },
        "parameters": {
            "top_n_edges": settings["top_n"],
            "clean_logit_diff": clean_diff,
            "corrupt_logit_diff": corrupt_diff,
            "clean_metric": float(np.mean([normalised(b.clean_diff) for b in per_batch])),
            "corrupt_metric": float(np.mean([normalised(b.corrupt_diff) for b in per_batch])),
        },
        "diagnostics": diagnostics,
        "edges": [
            {"from_edge": row.upstream, "to_edge": row.downstream, "score": float(row.score)}
            for row in top.itertuples()
        ],
    }
    write_text(json.dumps(results, indent=2), results_json)


STAGE = Stage(
    "eap", run_stage, ("pairs",), ("edges", "top_edges", "results_json", "graph_json"),
    reads=(
        "model", "device", "eap.method", Only("eap.ig_steps", when=("eap.method", "eap-ig")),
        "eap.top_n", "eap.min_logit_diff",
    ),
    job=("dataset", "feature"),
)
