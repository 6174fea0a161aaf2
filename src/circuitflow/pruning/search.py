"""The greedy walk: visit the nodes in order and drop each one whose removal keeps the score
within T% of the full model's.

score(circuit) = 100 x metric(circuit) / metric(full model). A node is dropped when
100 - score(current circuit without it) < T; a score above 100 counts as within. Each decision
depends on all earlier ones, so the one-forward-pass-per-candidate loop is sequential. A
speculative chain decides the same in fewer passes: one batched evaluation scores the next k
candidates, candidate j without the j before it, as if they were all dropped. Decisions are
taken in order up to and including the first keep; the candidates after it were scored on a
wrong assumption and are scored again in the next chain, which starts from the true circuit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from circuitflow import nodes as node_names

ORDERS = ("last_layer_first", "first_layer_first")


@dataclass(frozen=True)
class Step:
    node: int  # index into the prunable nodes
    score_without: float  # score % of the circuit at this step without the node
    removed: bool


@dataclass
class Pruning:
    steps: list[Step]
    circuit: torch.Tensor  # bool [nodes]: the nodes kept
    start_score: float  # score % of the circuit of every node (positions restricted as set)
    final_score: float
    n_evaluations: int  # batched evaluations (chains), the start score's included


def visiting_order(nodes: Sequence[str], order: str) -> list[int]:
    """Node indices by layer (last first, or first first), in model order within a layer."""
    layers = [node_names.parse(n).layer for n in nodes]
    sign = -1 if order == "last_layer_first" else 1
    return sorted(range(len(nodes)), key=lambda i: (sign * layers[i], i))


def greedy_prune(
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], n_nodes: int,
    order: Sequence[int], threshold: float, chain: int, show_progress: bool = False,
) -> Pruning:
    """Walk ``order``, deciding ``chain`` candidates per evaluation at most.

    ``score(circuits, current)`` returns the score % of each circuit [C, nodes] (bool), each
    differing from ``current`` in the nodes it lacks.
    """
    circuit = torch.ones(n_nodes, dtype=torch.bool)
    start = current = float(score(circuit[None], circuit)[0])
    evaluations = 1
    steps: list[Step] = []
    bar = tqdm(total=len(order), desc="greedy pruning", disable=not show_progress, mininterval=5)
    while len(steps) < len(order):
        ahead = list(order[len(steps) : len(steps) + chain])
        candidates = circuit.repeat(len(ahead), 1)
        for j, node in enumerate(ahead):
            candidates[j:, node] = False
        scores = score(candidates, circuit).tolist()
        evaluations += 1
        for node, without in zip(ahead, scores):
            removed = 100 - without < threshold
            steps.append(Step(node, without, removed))
            if not removed:
                break  # the later candidates assumed this node gone
            circuit[node] = False
            current = without
        bar.update(len(steps) - bar.n)
    bar.close()
    return Pruning(steps, circuit, start, current, evaluations)
