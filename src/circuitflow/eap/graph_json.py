"""The scored EAP graph in EAP-IG's graph JSON (its ``Graph.to_json``), which EAP-IG's
``Graph.from_json`` and the MIB circuit-localization tools read.

``{"cfg": {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"}, "nodes": {name: {"in_graph"}},
"edges": {"PARENT->CHILD" or "PARENT->CHILD<q|k|v>": {"score", "in_graph"}}}``, with EAP-IG's
node names: ``input``, ``a{L}.h{H}`` (circuitflow's ``l{L}.h{H}``), ``m{L}`` (``l{L}.mlp``) and
``logits``; an edge into a head names the head and, in angle brackets, which of its inputs.

- Scores are those of edges.parquet averaged over batches. Their sign is EAP-IG's as MIB runs it
  ((corrupt − clean) · gradient of the loss −logit diff, i.e. positive carries the clean answer);
  they are also divided by the clean − corrupt gap of the normalised metric.
- ``in_graph``: an edge is when it is in the top ``eap.top_n`` by |score|; a node is, as EAP-IG's
  ``apply_topn`` decides, when it has an outgoing edge in the graph and (the input aside) an
  incoming one; ``logits`` always is. No node scores: EAP-IG writes them only for node-level
  attribution.
- Grouped-query attention: EAP-IG has a key and a value input per query head, circuitflow one per
  key/value head. A shared receiver ``l{L}.kv{G}.k`` is expanded to the key input of each query
  head of its group, all in or out of the graph together (patching them all is patching the shared
  input), and its score split evenly among them, so that they add up to it. The heads' own shares
  are not known: they would need a model run with ungrouped key/value heads.
"""

from __future__ import annotations

import json

import numpy as np

from circuitflow import nodes
from circuitflow.eap.graph import Graph
from circuitflow.outputs import write_text


def writer_name(name: str) -> str:
    """EAP-IG's name of an upstream node: ``l0.h1`` -> ``a0.h1``, ``l0.mlp`` -> ``m0``."""
    node = nodes.parse(name)
    if node.layer is None:
        return name
    return f"a{node.layer}.h{node.head}" if node.is_head else f"m{node.layer}"


def receiver_inputs(name: str, heads_per_group: int) -> list[tuple[str, str | None]]:
    """EAP-IG's (node, q|k|v or None) for a receiver: one, or a group's query heads for
    ``l{L}.kv{G}.k|v``."""
    node = nodes.parse(name)
    if node.kind is None:
        return [(writer_name(name), None)]
    heads = (range(node.head * heads_per_group, (node.head + 1) * heads_per_group)
             if node.grouped else [node.head])
    return [(f"a{node.layer}.h{h}", node.kind) for h in heads]


def edge_name(parent: str, child: str, kind: str | None) -> str:
    return f"{parent}->{child}" if kind is None else f"{parent}->{child}<{kind}>"


def eap_ig_graph(graph: Graph, d_model: int, upstream: list[str], downstream: list[str],
                 scores: np.ndarray, in_graph: np.ndarray) -> dict:
    """The graph JSON of the edges ``upstream[i] -> downstream[i]`` with ``scores[i]``."""
    heads_per_group = graph.n_heads // graph.n_kv_heads
    edges, has_outgoing, has_incoming = {}, set(), {nodes.INPUT}
    for up, down, score, chosen in zip(upstream, downstream, scores, in_graph):
        parent = writer_name(up)
        inputs = receiver_inputs(down, heads_per_group)
        for child, kind in inputs:
            edges[edge_name(parent, child, kind)] = {
                "score": float(score) / len(inputs), "in_graph": bool(chosen),
            }
            if chosen:
                has_outgoing.add(parent)
                has_incoming.add(child)
    names = [writer_name(name) for name in graph.upstream]
    node_table = {name: {"in_graph": name in has_outgoing and name in has_incoming} for name in names}
    node_table[nodes.LOGITS] = {"in_graph": True}
    return {
        "cfg": {
            "n_layers": graph.n_layers, "n_heads": graph.n_heads,
            # circuitflow's graph is sequential: an MLP reads its own layer's heads.
            "parallel_attn_mlp": False, "d_model": int(d_model),
        },
        "nodes": node_table,
        "edges": edges,
    }


def write_graph_json(path, graph: Graph, d_model: int, upstream, downstream, scores, in_graph):
    write_text(json.dumps(eap_ig_graph(graph, d_model, upstream, downstream, scores, in_graph)), path)
