"""The computational graph EAP scores: upstream nodes, receivers and the edges between them.

Upstream nodes write into the residual stream: ``input`` (the embeddings), every head's output
``l{L}.h{H}`` and every MLP's output ``l{L}.mlp``. Receivers read from it: every head's query,
key and value input ``l{L}.h{H}.q|.k|.v``, every MLP's input ``l{L}.mlp`` and the ``logits``
(the final residual stream). With grouped-query attention a key/value input belongs to a
key/value head, named ``l{L}.kv{G}.k|.v`` (names from ``circuitflow.nodes``).

Upstream nodes are numbered in the order the model computes them (input, then per layer its heads
and its MLP), so the upstream nodes feeding a receiver are always a prefix of that order: every
node of an earlier layer, plus the layer's own heads for its MLP. Attribution and patching rely
on this: a receiver's edges are the first ``n_upstream_before(receiver)`` upstream nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from circuitflow import nodes


@dataclass(frozen=True)
class Graph:
    n_layers: int
    n_heads: int
    n_kv_heads: int

    # --- upstream nodes -------------------------------------------------------------------
    def head(self, layer: int, head: int = 0) -> int:
        """Index of head ``head`` of ``layer`` (the layer's heads are consecutive)."""
        return 1 + layer * (self.n_heads + 1) + head

    def mlp(self, layer: int) -> int:
        return self.head(layer, self.n_heads)

    @cached_property
    def upstream(self) -> list[str]:
        names = [nodes.INPUT]
        for layer in range(self.n_layers):
            names += nodes.layer_nodes(layer, self.n_heads)
        return names

    # --- receivers ------------------------------------------------------------------------
    def qkv_receivers(self, layer: int, kind: str) -> slice:
        """Receiver columns of the ``kind`` ("q", "k" or "v") inputs of ``layer``'s heads."""
        per_layer = self.n_heads + 2 * self.n_kv_heads + 1
        start = layer * per_layer + {
            "q": 0, "k": self.n_heads, "v": self.n_heads + self.n_kv_heads
        }[kind]
        return slice(start, start + (self.n_heads if kind == "q" else self.n_kv_heads))

    def mlp_receiver(self, layer: int) -> int:
        return self.qkv_receivers(layer, "v").stop

    @property
    def logits_receiver(self) -> int:
        return self.n_layers * (self.n_heads + 2 * self.n_kv_heads + 1)

    @cached_property
    def receivers(self) -> list[str]:
        kv_input = nodes.kv_head_input if self.n_kv_heads != self.n_heads else nodes.head_input
        names = []
        for layer in range(self.n_layers):
            names += [nodes.head_input(layer, h, "q") for h in range(self.n_heads)]
            for kind in ("k", "v"):
                names += [kv_input(layer, g, kind) for g in range(self.n_kv_heads)]
            names.append(nodes.mlp(layer))
        return names + [nodes.LOGITS]

    # --- edges ----------------------------------------------------------------------------
    @cached_property
    def n_upstream_before(self) -> torch.Tensor:
        """For each receiver, how many upstream nodes (a prefix of ``upstream``) feed it."""
        counts = []
        for layer in range(self.n_layers):
            counts += [self.head(layer)] * (self.n_heads + 2 * self.n_kv_heads)
            counts.append(self.mlp(layer))  # the layer's own heads feed its MLP
        counts.append(len(self.upstream))
        return torch.tensor(counts)

    @cached_property
    def edge_mask(self) -> torch.Tensor:
        """Boolean [n_upstream, n_receivers]: True where an edge exists."""
        rows = torch.arange(len(self.upstream)).unsqueeze(1)
        return rows < self.n_upstream_before.unsqueeze(0)

    @cached_property
    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(upstream index, receiver index) of every edge, in a fixed order."""
        return tuple(self.edge_mask.nonzero(as_tuple=True))

    def edge_names(self) -> tuple[list[str], list[str]]:
        up, down = self.edges
        return [self.upstream[i] for i in up.tolist()], [self.receivers[j] for j in down.tolist()]
