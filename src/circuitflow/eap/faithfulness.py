"""How faithful the top-k EAP edges are as a circuit, by exact edge patching.

The circuit of size k is the k edges with the largest |score averaged over batches|. Its metric is
that of the clean input with every other edge patched to its corrupt value: each receiver reads
its input minus Σ over non-circuit upstream u of (a_u(this run) − a_u(corrupt run)), so it sees
the corrupt output of those nodes and the circuit nodes' output of this very run.
Normalised faithfulness = (m(circuit) − m(corrupt)) / (m(full model) − m(corrupt)), m the mean
logit difference: the full graph scores 1 and the empty one 0.
"""

from __future__ import annotations

import logging

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
from circuitflow.tables import read_table, write_table
from circuitflow.stage import Stage

log = logging.getLogger(__name__)


def rank_edges(model: EdgeModel, edges: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """(upstream index, receiver index) of the edges in ``edges``, by decreasing |mean score|."""
    mean = edges.groupby(["upstream", "downstream"], sort=True)["score"].mean()
    mean = mean.iloc[np.argsort(-mean.abs().to_numpy(), kind="stable")]
    g = model.graph
    up_index = {name: i for i, name in enumerate(g.upstream)}
    down_index = {name: j for j, name in enumerate(g.receivers)}
    unknown = [f"{u}->{d}" for u, d in mean.index if u not in up_index or d not in down_index]
    if unknown:
        raise CircuitflowError(
            f"edges {unknown[:3]} are not in this model's graph: were they scored on another model?"
        )
    up = torch.tensor([up_index[u] for u, _ in mean.index])
    down = torch.tensor([down_index[d] for _, d in mean.index])
    if not g.edge_mask[up, down].all():
        raise CircuitflowError("the edge table names edges the graph does not have")
    return up, down


def patch_weights(model: EdgeModel, circuit: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """[n_upstream, n_receivers]: 1 on every edge outside ``circuit`` (patched), 0 elsewhere."""
    weights = model.graph.edge_mask.float()
    weights[circuit] = 0.0
    return weights


def patched_logit_diff(model: EdgeModel, batch: PairBatch, corrupt: torch.Tensor, weights: torch.Tensor):
    """Per-row logit difference of the clean input with edges patched by ``weights`` towards the
    corrupt upstream outputs ``corrupt`` (see ``EdgeModel.run``)."""
    with torch.no_grad():
        current = model.upstream_buffer(batch.clean)
        logits = model.run(batch.clean, record=current, patch=(corrupt, weights.to(current.device)))
        return logit_diff(logits, batch)


def run_stage(params: dict, pairs: str, edges: str, out: str) -> None:
    sizes = params["faithfulness"]["circuit_sizes"]
    device = resolve_device(params["device"])
    loaded = load_model(params["model"], device)
    model = EdgeModel(loaded.model, loaded.tokenizer)
    batches = pair_batches(read_pairs(pairs), loaded.tokenizer.pad_token_id, device)
    ranked = rank_edges(model, read_table(edges, ["batch", "upstream", "downstream", "score"]))
    n_edges = len(ranked[0])

    circuits = [patch_weights(model, (ranked[0][:k], ranked[1][:k])) for k in sizes]

    def row_diffs(batch: PairBatch) -> torch.Tensor:
        """[2 + circuits, rows]: each row's logit difference on the full model, the corrupt input
        and every circuit."""
        corrupt = model.upstream_buffer(batch.corrupt)
        with torch.no_grad():
            corrupted = logit_diff(model.run(batch.corrupt, record=corrupt), batch)
            full = logit_diff(model.run(batch.clean), batch)
        patched = [patched_logit_diff(model, batch, corrupt, w) for w in circuits]
        return torch.stack([full, corrupted, *patched]).cpu()

    # Slices of a batch's rows, as many as the GPU needs (halved on out-of-memory).
    parts = Batches(max(map(len, batches)))
    full, corrupted, circuit = [], [], {k: [] for k in sizes}
    for batch in tqdm(batches, desc="faithfulness"):
        diffs = parts.map(range(len(batch)), lambda r: row_diffs(batch.rows(slice(r.start, r.stop))))
        means = torch.cat(diffs, dim=1).mean(dim=1).tolist()
        full.append(means[0])
        corrupted.append(means[1])
        for k, mean in zip(sizes, means[2:]):
            circuit[k].append(mean)
    full_diff, corrupt_diff = float(np.mean(full)), float(np.mean(corrupted))
    if full_diff == corrupt_diff:
        raise CircuitflowError(
            f"{pairs}: clean and corrupt prompts give the same mean logit difference; "
            "faithfulness is undefined"
        )
    metric = [float(np.mean(circuit[k])) for k in sizes]
    log.info("full model %.4f, corrupt %.4f", full_diff, corrupt_diff)
    write_table(pd.DataFrame({
        "circuit_size": sizes,
        "n_edges_in_circuit": [min(k, n_edges) for k in sizes],
        "metric": metric,
        "faithfulness": [(m - corrupt_diff) / (full_diff - corrupt_diff) for m in metric],
    }), out)


STAGE = Stage(
    "faithfulness", run_stage, ("pairs", "edges"), ("out",),
    reads=("model", "device", "faithfulness.circuit_sizes"),
)
