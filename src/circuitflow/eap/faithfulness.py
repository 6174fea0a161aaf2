"""How faithful EAP's circuits are, measured as MIB does (Mueller et al. 2025), by exact edge
patching.

A circuit is a set of edges. Its metric m(C) is that of the clean input with every other edge
patched to its corrupt value: each receiver reads its input minus Σ over non-circuit upstream u of
(a_u(this run) − a_u(corrupt run)), so it sees the corrupt output of those nodes and the circuit
nodes' output of this very run. Faithfulness f(C) = (m(C) − m(∅)) / (m(N) − m(∅)), m the mean
logit difference, N the full model, ∅ the empty circuit (the corrupt input): N scores 1, ∅ 0.

Circuits: the top k edges by score averaged over batches, ranked by |score|
(``faithfulness.ranking: absolute``) or by signed score (``signed``: the edges that carry the clean
answer most first), for every configured k (``faithfulness.circuit_sizes``) and for MIB's grid of
the top 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 and 100 % of the graph's edges (⌊p · total⌋ edges, as
MIB counts). The baseline: ``faithfulness.n_random`` random circuits of every size, draw d being
the first k edges of a random order of all edges (seeded by ``faithfulness.seed``, independent of
the scores), so that a draw's circuits are nested like EAP's.

CPR and CMD (MIB's): the areas under f and under |1 − f| over the edge-fraction axis
(edges in the circuit / all edges), trapezoids between the grid's points from 0.1 % to 100 %. MIB
first prunes the edges of a circuit that lead nowhere; that changes its count, not its f (their
effect reaches the logits only through patched edges), and is not done here.
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

# MIB's circuit sizes, in tenths of a percent of all edges (integers: ⌊p · total⌋ exactly).
MIB_PER_MILLE = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def graph_edges(model: EdgeModel, edges: pd.DataFrame):
    """(upstream index, receiver index, mean score over batches) of the edges in ``edges``, in
    name order."""
    mean = edges.groupby(["upstream", "downstream"], sort=True)["score"].mean()
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
    return up, down, mean.to_numpy()


def ranked(mean: np.ndarray, ranking: str) -> np.ndarray:
    """Edge indexes, best first: by decreasing |mean| (``absolute``) or mean (``signed``)."""
    key = np.abs(mean) if ranking == "absolute" else mean
    return np.argsort(-key, kind="stable")


def random_orders(n_edges: int, n_random: int, seed: int) -> list[np.ndarray]:
    """``n_random`` random orders of ``n_edges`` edges; the same seed gives the same orders."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n_edges) for _ in range(n_random)]


def mib_sizes(n_edges: int) -> list[int]:
    return [n_edges * p // 1000 for p in MIB_PER_MILLE]


def area(x, y) -> float:
    """Trapezoid area under the points (x, y), x increasing."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def cpr_cmd(fraction, faithfulness) -> tuple[float, float]:
    """MIB's CPR (area under f) and CMD (area under |1 − f|) over the edge-fraction axis."""
    f = np.asarray(faithfulness, dtype=float)
    return area(fraction, f), area(fraction, np.abs(1 - f))


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
        final = model.run(
            batch.clean, batch.last, record=current, patch=(corrupt, weights.to(current.device))
        )
        return logit_diff(final, batch)


def circuit_requests(sizes: list[int], n_edges: int) -> list[tuple[float | None, int]]:
    """(MIB percentage or None, edges asked for) of every circuit measured: the configured sizes,
    then MIB's grid."""
    grid = [(p / 10, k) for p, k in zip(MIB_PER_MILLE, mib_sizes(n_edges))]
    return [(None, k) for k in sizes] + grid


def summary_table(curves: pd.DataFrame, seed: int, full_diff: float, corrupt_diff: float):
    """CPR and CMD of the EAP curve and, over the random draws, their mean and spread (standard
    deviation), from the MIB-grid rows of the faithfulness table ``curves``."""
    grid = curves[curves["edge_percent"].notna()]
    rows = []
    for circuit, group in grid.groupby("circuit", sort=False):
        areas = pd.DataFrame(
            [cpr_cmd(draw["edge_fraction"], draw["faithfulness"])
             for _, draw in group.groupby("draw", dropna=False, sort=True)],
            columns=["cpr", "cmd"],
        )
        rows.append({
            "circuit": circuit, "ranking": group["ranking"].iloc[0],
            "n_curves": len(areas), "seed": seed if circuit == "random" else None,
            "n_edges_total": int(group["n_edges_total"].iloc[0]),
            "cpr": areas["cpr"].mean(), "cmd": areas["cmd"].mean(),
            "cpr_std": areas["cpr"].std() if circuit == "random" else None,
            "cmd_std": areas["cmd"].std() if circuit == "random" else None,
            "full_logit_diff": full_diff, "corrupt_logit_diff": corrupt_diff,
        })
    return pd.DataFrame(rows).astype({"seed": "Int64", "cpr_std": float, "cmd_std": float})


def run_stage(params: dict, pairs: str, edges: str, out: str, summary: str) -> None:
    settings = params["faithfulness"]
    device = resolve_device(params["device"])
    loaded = load_model(params["model"], device)
    model = EdgeModel(loaded.model, loaded.tokenizer)
    batches = pair_batches(read_pairs(pairs), loaded.tokenizer.pad_token_id, device)
    up, down, mean = graph_edges(model, read_table(edges, ["batch", "upstream", "downstream", "score"]))
    n_edges = len(mean)
    requests = circuit_requests(settings["circuit_sizes"], n_edges)
    sizes = sorted({min(k, n_edges) for _, k in requests})
    # (circuit, draw, edge order): EAP's ranking, then the random baseline.
    orders = [("eap", None, ranked(mean, settings["ranking"]))] + [
        ("random", draw, order) for draw, order in
        enumerate(random_orders(n_edges, settings["n_random"], settings["seed"]))
    ]
    circuits = [
        patch_weights(model, (up[torch.as_tensor(order[:k])], down[torch.as_tensor(order[:k])]))
        for _, _, order in orders for k in sizes
    ]

    def row_diffs(batch: PairBatch) -> torch.Tensor:
        """[2 + circuits, rows]: each row's logit difference on the full model, the corrupt input
        and every circuit."""
        corrupt = model.upstream_buffer(batch.corrupt)
        with torch.no_grad():
            corrupted = logit_diff(model.run(batch.corrupt, batch.last, record=corrupt), batch)
            full = logit_diff(model.run(batch.clean, batch.last), batch)
        patched = [patched_logit_diff(model, batch, corrupt, w) for w in circuits]
        return torch.stack([full, corrupted, *patched]).cpu()

    # Slices of a batch's rows, as many as the GPU needs (halved on out-of-memory).
    parts = Batches(max(map(len, batches)))
    per_batch = []
    for batch in tqdm(batches, desc="faithfulness"):
        diffs = parts.map(range(len(batch)), lambda r: row_diffs(batch.rows(slice(r.start, r.stop))))
        per_batch.append(torch.cat(diffs, dim=1).double().mean(dim=1))
    full_diff, corrupt_diff, *metric = torch.stack(per_batch).mean(dim=0).tolist()
    if full_diff == corrupt_diff:
        raise CircuitflowError(
            f"{pairs}: clean and corrupt prompts give the same mean logit difference; "
            "faithfulness is undefined"
        )
    log.info("full model %.4f, corrupt %.4f, %d edges", full_diff, corrupt_diff, n_edges)
    rows = []
    for i, (circuit, draw, _) in enumerate(orders):
        for percent, size in requests:
            n_in = min(size, n_edges)
            m = metric[i * len(sizes) + sizes.index(n_in)]
            rows.append({
                "circuit": circuit, "ranking": settings["ranking"] if circuit == "eap" else None,
                "draw": draw, "edge_percent": percent, "circuit_size": size,
                "n_edges_in_circuit": n_in, "n_edges_total": n_edges,
                "edge_fraction": n_in / n_edges, "metric": m,
                "faithfulness": (m - corrupt_diff) / (full_diff - corrupt_diff),
            })
    table = pd.DataFrame(rows).astype({"draw": "Int64", "edge_percent": float})
    write_table(table, out)
    write_table(summary_table(table, settings["seed"], full_diff, corrupt_diff), summary)


STAGE = Stage(
    "faithfulness", run_stage, ("pairs", "edges"), ("out", "summary"),
    reads=(
        "model", "device", "faithfulness.circuit_sizes", "faithfulness.ranking",
        "faithfulness.n_random", "faithfulness.seed",
    ),
)
