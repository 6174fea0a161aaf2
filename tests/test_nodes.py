"""The node vocabulary: names, parsing, model order and the QuantaMechInterp export."""

import random

import pandas as pd
import pytest

from circuitflow import nodes


def test_names_parse_back_to_their_parts():
    assert nodes.parse(nodes.head(3, 12)) == (3, 12, None, False)
    assert nodes.parse(nodes.mlp(10)) == (10, None, None, False)
    for kind in "qkv":
        assert nodes.parse(nodes.head_input(0, 7, kind)) == (0, 7, kind, False)
    for kind in "kv":
        assert nodes.parse(nodes.kv_head_input(2, 1, kind)) == (2, 1, kind, True)
    assert nodes.parse(nodes.INPUT).layer is None and nodes.parse(nodes.LOGITS).layer is None
    assert [nodes.head(0, 1), nodes.mlp(0), nodes.head_input(1, 2, "q"),
            nodes.kv_head_input(1, 0, "v")] == ["l0.h1", "l0.mlp", "l1.h2.q", "l1.kv0.v"]
    head, mlp = nodes.parse("l4.h0"), nodes.parse("l4.mlp")
    assert head.is_head and not head.is_mlp and mlp.is_mlp and not mlp.is_head
    assert not nodes.parse("input").is_mlp


@pytest.mark.parametrize("name", [
    "L0H1", "H0", "MLP", "l0", "l0.h", "l0.h1.x", "l0.mlp.q", "l0.kv1", "l0.kv1.q", "l01.h1",
    "l0.h01", "l-1.h0", " l0.h1", "l0.h1 ", "Input", "l0.attn",
])
def test_other_strings_are_refused(name):
    with pytest.raises(ValueError, match="not a node name"):
        nodes.parse(name)


def test_writer_of_a_receiver_is_its_head():
    assert nodes.writer_of("l2.h3.k") == "l2.h3"
    assert [nodes.writer_of(n) for n in ("l2.h3", "l2.mlp", "l2.kv1.k", "input", "logits")] == [
        "l2.h3", "l2.mlp", "l2.kv1.k", "input", "logits"
    ]


def test_sort_key_is_model_order():
    n_layers, n_heads, n_kv = 2, 12, 3
    expected = ["input"]
    for layer in range(n_layers):
        for h in range(n_heads):
            expected += [f"l{layer}.h{h}", f"l{layer}.h{h}.q", f"l{layer}.h{h}.k",
                         f"l{layer}.h{h}.v"]
        expected += [f"l{layer}.kv{g}.{kind}" for g in range(n_kv) for kind in "kv"]
        expected.append(f"l{layer}.mlp")
    expected.append("logits")
    shuffled = random.Random(0).sample(expected, len(expected))
    assert sorted(shuffled, key=nodes.sort_key) == expected
    assert nodes.layer_nodes(1, 3) == ["l1.h0", "l1.h1", "l1.h2", "l1.mlp"]


def test_table_columns():
    table = nodes.columns(["l0.h1", "l0.mlp", "input", "l3.h10"])
    assert list(table.columns) == ["node", "layer", "head"]
    assert table["node"].tolist() == ["l0.h1", "l0.mlp", "input", "l3.h10"]
    assert table["layer"].tolist() == [0, 0, pd.NA, 3]
    assert table["head"].tolist() == [1, pd.NA, pd.NA, 10]


def test_quanta_export_round_trips():
    head = nodes.to_quanta("l1.h2", 7, ["Fail%:40"])
    assert head == {"position": 7, "layer": 1, "is_head": True, "num": 2, "tags": ["Fail%:40"]}
    mlp = nodes.to_quanta("l0.mlp", 3, [])
    assert mlp == {"position": 3, "layer": 0, "is_head": False, "num": 0, "tags": []}
    assert nodes.from_quanta(head) == ("l1.h2", 7) and nodes.from_quanta(mlp) == ("l0.mlp", 3)
    for name in ("l1.h2.q", "l1.kv0.k", "input", "logits"):
        with pytest.raises(ValueError, match="only heads and MLPs"):
            nodes.to_quanta(name, 0, [])
