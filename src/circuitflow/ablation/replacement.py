"""What replaces an ablated node's output: its mean, zero, or another example's output there.

A ``Replacement`` serves every (example, position) of an engine's examples: a source of values
per layer and, per (example, position), the source row to take them from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Replacement:
    """``heads[l][donor[e, p], p, h]`` and ``mlps[l][donor[e, p], p]`` replace head h / the MLP
    of layer l in example e at position p."""

    heads: list[torch.Tensor]  # per layer [M, T_max, n_heads, d_head]
    mlps: list[torch.Tensor]  # per layer [M, T_max, d_model]
    donor: torch.Tensor  # long [N, T_max]; -1 where no value exists


def by_method(method: str, engine, seed: int = 0) -> Replacement:
    """The replacement ``method`` ("mean", "zero" or "resample") for ``engine``'s examples
    (at least one); ``seed`` draws resample's donors."""
    if method == "resample":
        return resample(engine, seed)
    return {"mean": mean, "zero": zero}[method](engine)


def _everywhere(engine, heads, mlps) -> Replacement:
    """One value per node and position, the same for every example."""
    n, width = engine.examples.tokens.shape
    donor = torch.zeros(n, width, dtype=torch.long, device=engine.device)
    return Replacement(heads, mlps, donor)


def zero(engine) -> Replacement:
    layout, width = engine.layout, engine.examples.tokens.shape[1]
    zeros = torch.zeros((), device=engine.device)
    heads = zeros.expand(1, width, layout.n_heads, layout.d_head)
    mlps = zeros.expand(1, width, engine.model.config.hidden_size)
    return _everywhere(engine, [heads] * layout.n_layers, [mlps] * layout.n_layers)


def mean(engine) -> Replacement:
    """Each node's mean output over every real position of every example."""
    ex = engine.examples
    width = ex.tokens.shape[1]
    outputs_h, outputs_m = engine.node_outputs()
    real = (torch.arange(width, device=engine.device) < ex.lengths[:, None]).float()
    count = real.sum()
    heads = [(torch.einsum("nt,nthd->hd", real, z) / count).expand(1, width, -1, -1)
             for z in outputs_h]
    mlps = [(torch.einsum("nt,ntd->d", real, m) / count).expand(1, width, -1)
            for m in outputs_m]
    return _everywhere(engine, heads, mlps)


def resample(engine, seed: int) -> Replacement:
    """Each node's output in another example at the same position (see ``resample_donors``)."""
    donor = resample_donors(engine.examples.lengths.cpu().numpy(), seed)
    return Replacement(*engine.node_outputs(), torch.as_tensor(donor, device=engine.device))


def resample_donors(lengths: np.ndarray, seed: int) -> np.ndarray:
    """For each (example, position), another example that has that position (seeded); -1 if none."""
    rng = np.random.default_rng(seed)
    donors = np.full((len(lengths), int(lengths.max())), -1, dtype=np.int64)
    for p in range(donors.shape[1]):
        covering = np.flatnonzero(lengths > p)
        if len(covering) < 2:
            continue
        pick = rng.integers(0, len(covering) - 1, size=len(covering))
        pick += pick >= np.arange(len(covering))  # skip the example itself
        donors[covering, p] = covering[pick]
    return donors
