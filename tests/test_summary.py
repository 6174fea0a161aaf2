"""The sweep summary: its tables must restate its inputs exactly."""

import json

import pandas as pd
import pytest

from circuitflow.cli import main
from circuitflow.tables import read_table, write_table

RUNS = [("m1", "cs1"), ("m2", "cs2")]
CORRECT = {"m1": [True, True, False, True], "m2": [False, True]}
USEFUL = {
    # l0.h1 at two positions, l0.h2, l0.mlp, l1.mlp at two positions; layer 2 has none.
    "m1": [{"position": 3, "layer": 0, "is_head": True, "num": 1, "tags": ["Fail%:50"]},
           {"position": 4, "layer": 0, "is_head": True, "num": 1, "tags": ["Fail%:20"]},
           {"position": 4, "layer": 0, "is_head": True, "num": 2, "tags": ["Fail%:40"]},
           {"position": 5, "layer": 0, "is_head": False, "num": 0, "tags": ["Fail%:35"]},
           {"position": 4, "layer": 1, "is_head": False, "num": 0, "tags": ["Fail%:90"]},
           {"position": 6, "layer": 1, "is_head": False, "num": 0, "tags": ["Fail%:60"]}],
    "m2": [],
}
EDGES = pd.DataFrame({
    "upstream": ["input", "l0.h1", "l0.mlp"], "downstream": ["logits", "l1.mlp", "logits"],
    "score": [0.5, -0.25, 0.125], "rank": [1, 2, 3],
})
OUTPUTS = ("accuracy_out", "useful_out", "edges_out", "overlap_out", "plot")
# m1's pruned circuit: l0.h1 (also useful and on a top edge) and l2.h0 (only pruning keeps it).
CIRCUIT = {"nodes": ["l0.h1", "l2.h0"], "threshold": 3}


def summary_command(inputs, outputs, useful_texts):
    """The summary's command line over RUNS, their useful_nodes.json given as text."""
    args = []
    for model, _ in RUNS:
        write_table(pd.DataFrame({"correct": CORRECT[model]}), inputs / f"{model}_clean.parquet")
        (inputs / f"{model}_useful.json").write_text(useful_texts[model])
        write_table(EDGES, inputs / f"{model}_edges.parquet")
        args += [f"clean={inputs / f'{model}_clean.parquet'}",
                 f"useful={inputs / f'{model}_useful.json'}",
                 f"top_edges={inputs / f'{model}_edges.parquet'}"]
    (inputs / "m1_circuit.json").write_text(json.dumps(CIRCUIT))
    return [
        "summary", *args, f"circuits={inputs / 'm1_circuit.json'}",
        *(f"{name}={outputs / name}.{'png' if name == 'plot' else 'parquet'}" for name in OUTPUTS),
        "--params", json.dumps({
            "runs": RUNS, "edge_runs": [[m, d, "ENGTABLENAME"] for m, d in RUNS],
            "pair_runs": RUNS[:1],
            "plots": {"dpi": 60},
        }),
    ]


def test_summary_tables_restate_inputs(tmp_path):
    main(summary_command(tmp_path, tmp_path, {m: json.dumps(n) for m, n in USEFUL.items()}))
    accuracy = read_table(tmp_path / "accuracy_out.parquet")
    assert accuracy[["model", "dataset"]].values.tolist() == [list(run) for run in RUNS]
    assert accuracy["n_correct"].tolist() == [3, 1]
    assert accuracy["clean_accuracy"].tolist() == [0.75, 0.5]
    useful = read_table(tmp_path / "useful_out.parquet")
    assert list(useful.columns) == ["model", "dataset", "layer", "n_useful_heads", "n_useful_mlps"]
    # Distinct nodes, however many positions each is useful at; no row for a run without any.
    assert useful.values.tolist() == [["m1", "cs1", 0, 2, 1], ["m1", "cs1", 1, 0, 1]]
    edges = read_table(tmp_path / "edges_out.parquet")
    assert len(edges) == 6 and set(edges["feature"]) == {"ENGTABLENAME"}
    assert edges[edges["model"] == "m2"][["dataset", "score"]].values.tolist() == [
        ["cs2", 0.5], ["cs2", -0.25], ["cs2", 0.125],
    ]
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    overlap = read_table(tmp_path / "overlap_out.parquet").set_index("node")
    assert overlap["model"].unique().tolist() == ["m1"]
    flags = overlap[["in_pruned_circuit", "useful", "in_top_edges"]].astype(bool)
    assert flags.to_dict("index") == {
        "l0.h1": {"in_pruned_circuit": True, "useful": True, "in_top_edges": True},
        "l0.h2": {"in_pruned_circuit": False, "useful": True, "in_top_edges": False},
        "l0.mlp": {"in_pruned_circuit": False, "useful": True, "in_top_edges": True},
        "l1.mlp": {"in_pruned_circuit": False, "useful": True, "in_top_edges": True},
        "l2.h0": {"in_pruned_circuit": True, "useful": False, "in_top_edges": False},
    }


def test_truncated_useful_nodes_is_a_one_line_error(tmp_path, capsys):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    texts = {m: json.dumps(n) for m, n in USEFUL.items()}
    texts["m1"] = texts["m1"][: len(texts["m1"]) // 2]
    with pytest.raises(SystemExit) as exit:
        main(summary_command(inputs, outputs, texts))
    assert exit.value.code == 1
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and message.startswith("circuitflow summary: error: ")
    assert str(inputs / "m1_useful.json") in message and "not valid JSON" in message
    assert list(outputs.iterdir()) == []
