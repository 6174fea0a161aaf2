"""The node vocabulary: one name for every component of a transformer, in every table, plot and
JSON file.

Writers into the residual stream: ``input`` (the embeddings), ``l{L}.h{H}`` (head H of layer L:
its output z_h @ W_O[h]) and ``l{L}.mlp`` (the MLP's output). Readers of it, as EAP's receivers:
``l{L}.h{H}.q|k|v`` (a head's query, key and value input; ``l{L}.kv{G}.k|v`` for the key/value
head G of grouped-query attention), ``l{L}.mlp`` (the MLP's own input) and ``logits`` (the final
residual stream). Layers and heads count from 0.

The QuantaMechInterp node list (``{position, layer, is_head, num, tags}``) is an export format,
converted here both ways.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import pandas as pd

INPUT = "input"
LOGITS = "logits"

_NUMBER = r"(0|[1-9]\d*)"  # no leading zeros: one name per node
_NAME = re.compile(rf"l{_NUMBER}\.(?:h{_NUMBER}(?:\.([qkv]))?|kv{_NUMBER}\.([kv])|mlp)")


def head(layer: int, head: int) -> str:
    return f"l{layer}.h{head}"


def mlp(layer: int) -> str:
    return f"l{layer}.mlp"


def head_input(layer: int, head: int, kind: str) -> str:
    """A head's ``kind`` ("q", "k" or "v") input."""
    return f"l{layer}.h{head}.{kind}"


def kv_head_input(layer: int, group: int, kind: str) -> str:
    """The ``kind`` ("k" or "v") input of key/value head ``group`` (grouped-query attention)."""
    return f"l{layer}.kv{group}.{kind}"


def layer_nodes(layer: int, n_heads: int) -> list[str]:
    """The writers of one layer in the order the model computes them: heads, then the MLP."""
    return [head(layer, h) for h in range(n_heads)] + [mlp(layer)]


class Node(NamedTuple):
    """A parsed name. ``layer`` is None for ``input`` and ``logits``; ``head`` is None for an
    MLP; ``kind`` is "q", "k", "v" for a head's input, else None; ``grouped`` marks ``kv``."""

    layer: int | None
    head: int | None
    kind: str | None
    grouped: bool = False

    @property
    def is_head(self) -> bool:
        return self.head is not None

    @property
    def is_mlp(self) -> bool:
        return self.layer is not None and self.head is None


def parse(name: str) -> Node:
    if name in (INPUT, LOGITS):
        return Node(None, None, None)
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(
            f"{name!r} is not a node name (input, l{{L}}.h{{H}}, l{{L}}.mlp, "
            f"l{{L}}.h{{H}}.q|k|v, l{{L}}.kv{{G}}.k|v, logits)"
        )
    layer, head_index, head_kind, group, group_kind = match.groups()
    if head_index is not None:
        return Node(int(layer), int(head_index), head_kind)
    if group is not None:
        return Node(int(layer), int(group), group_kind, grouped=True)
    return Node(int(layer), None, None)


def writer_of(name: str) -> str:
    """The component a receiver name belongs to: ``l0.h1.q`` -> ``l0.h1``; others unchanged."""
    node = parse(name)
    if node.kind is None or node.grouped:
        return name
    return head(node.layer, node.head)


def sort_key(name: str) -> tuple:
    """Model order: input, then per layer its heads (each followed by its inputs), the shared
    key/value inputs of grouped-query attention, its MLP; then logits."""
    if name == INPUT:
        return (-1,)
    if name == LOGITS:
        return (float("inf"),)
    node = parse(name)
    if node.is_mlp:
        return (node.layer, 2)
    return (node.layer, int(node.grouped), node.head, (None, "q", "k", "v").index(node.kind))


def columns(names) -> pd.DataFrame:
    """The ``node``, ``layer`` and ``head`` columns of a table with one row per name in
    ``names``: layer null for input and logits, head null for an MLP (the key/value head for
    ``l{L}.kv{G}.k|v``)."""
    parsed = [parse(name) for name in names]
    return pd.DataFrame({
        "node": pd.array(list(names), dtype="str"),
        "layer": pd.array([n.layer for n in parsed], dtype="Int32"),
        "head": pd.array([n.head for n in parsed], dtype="Int32"),
    })


def to_quanta(name: str, position: int, tags: list[str]) -> dict:
    """A head or MLP at one position as a QuantaMechInterp node-list entry."""
    node = parse(name)
    if node.layer is None or node.kind is not None:
        raise ValueError(f"{name!r}: only heads and MLPs have QuantaMechInterp entries")
    return {
        "position": int(position), "layer": node.layer, "is_head": node.is_head,
        "num": node.head if node.is_head else 0, "tags": list(tags),
    }


def from_quanta(entry: dict) -> tuple[str, int]:
    """(node name, position) of a QuantaMechInterp node-list entry."""
    name = head(entry["layer"], entry["num"]) if entry["is_head"] else mlp(entry["layer"])
    return name, int(entry["position"])
