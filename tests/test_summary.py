"""The sweep summary: its tables must restate its inputs exactly."""

import json

import pandas as pd

from circuitflow.cli import main
from circuitflow.tables import read_table, write_table


def test_summary_tables_restate_inputs(tmp_path):
    runs = [("m1", "cs1"), ("m2", "cs1")]
    correct = {"m1": [True, True, False, True], "m2": [False, True]}
    nodes = {
        "m1": [{"position": 3, "layer": 0, "is_head": True, "num": 1, "tags": ["Fail%:50"]},
               {"position": 4, "layer": 0, "is_head": True, "num": 1, "tags": ["Fail%:20"]},
               {"position": 4, "layer": 1, "is_head": False, "num": 0, "tags": ["Fail%:90"]}],
        "m2": [],
    }
    args = []
    for model, cs in runs:
        write_table(pd.DataFrame({"correct": correct[model]}), tmp_path / f"{model}_clean.parquet")
        (tmp_path / f"{model}_useful.json").write_text(json.dumps(nodes[model]))
        args += [f"clean={tmp_path / f'{model}_clean.parquet'}",
                 f"useful={tmp_path / f'{model}_useful.json'}"]
        edges = pd.DataFrame({
            "upstream": ["input", "l0.h1", "l0.mlp"], "downstream": ["logits", "l1.mlp", "logits"],
            "score": [0.5, -0.25, 0.125], "rank": [1, 2, 3],
        })
        write_table(edges, tmp_path / f"{model}_edges.parquet")
        args.append(f"top_edges={tmp_path / f'{model}_edges.parquet'}")
    out = {name: tmp_path / f"out_{name}" for name in ("accuracy", "useful", "edges")}
    main([
        "summary", *args, *(f"{k}_out={v}.parquet" for k, v in out.items()),
        f"plot={tmp_path / 'comparison.png'}",
        "--params", json.dumps({
            "runs": runs, "edge_runs": [[m, c, "ENGTABLENAME"] for m, c in runs],
            "plots": {"dpi": 60},
        }),
    ])
    accuracy = read_table(f"{out['accuracy']}.parquet")
    assert accuracy["n_correct"].tolist() == [3, 1]
    assert accuracy["clean_accuracy"].tolist() == [0.75, 0.5]
    useful = read_table(f"{out['useful']}.parquet")
    assert list(useful.columns) == ["model", "command_set", "node", "layer", "head", "n_useful"]
    assert useful[["model", "node", "n_useful"]].values.tolist() == [
        ["m1", "l0.h1", 2], ["m1", "l1.mlp", 1],
    ]
    assert useful["layer"].tolist() == [0, 1] and useful["head"].isna().tolist() == [False, True]
    edges = read_table(f"{out['edges']}.parquet")
    assert len(edges) == 6 and set(edges["feature"]) == {"ENGTABLENAME"}
    assert edges[edges["model"] == "m2"]["score"].tolist() == [0.5, -0.25, 0.125]
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
