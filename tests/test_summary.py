"""The sweep summary: its tables must restate its inputs exactly, and its figure must print
what it colours, legibly, and say which EAP runs are ill-conditioned."""

import json

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest

from circuitflow import summary
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


def summary_command(inputs, outputs, useful_texts, reasons=None):
    """The summary's command line over RUNS, their useful_nodes.json given as text; ``reasons``
    says why a model's EAP run is ill-conditioned (absent: it is not)."""
    reasons = reasons or {}
    args = []
    for model, _ in RUNS:
        write_table(pd.DataFrame({"correct": CORRECT[model]}), inputs / f"{model}_clean.parquet")
        (inputs / f"{model}_useful.json").write_text(useful_texts[model])
        write_table(EDGES, inputs / f"{model}_edges.parquet")
        reason = reasons.get(model)
        (inputs / f"{model}_eap_results.json").write_text(json.dumps(
            {"diagnostics": {"ill_conditioned": reason is not None, "reason": reason}}
        ))
        args += [f"clean={inputs / f'{model}_clean.parquet'}",
                 f"useful={inputs / f'{model}_useful.json'}",
                 f"top_edges={inputs / f'{model}_edges.parquet'}",
                 f"eap_results={inputs / f'{model}_eap_results.json'}"]
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


def footnotes(fig):
    """The figure's own texts other than its title."""
    return [t.get_text() for t in fig.texts if t.get_text() != fig.get_suptitle()]


def heatmap_cells(fig):
    """The heatmap's image and its printed cells as {(row, column): text}."""
    ax = fig.axes[2]
    (image,) = ax.images
    return image, {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}


def planted_figure():
    # One run whose edges span the colour scale: +1 (the dark blue end), -0.5, and +0.1 (near
    # white), relative to its largest |score| 0.8; a second run on another edge.
    edges = pd.DataFrame({
        "model": "m1", "dataset": "cs1", "feature": ["F"] * 3 + ["G"],
        "rank": [1, 2, 3, 1], "upstream": ["input", "l0.h1", "l0.mlp", "input"],
        "downstream": ["logits", "l1.mlp", "logits", "l0.mlp"],
        "score": [0.8, -0.4, 0.08, -2.0], "ill_conditioned": False,
        "ill_conditioned_reason": None,
    })
    accuracy = pd.DataFrame({"model": ["m1"], "dataset": ["cs1"], "n_examples": [4],
                             "n_correct": [3], "clean_accuracy": [0.75]})
    useful = pd.DataFrame(columns=["model", "dataset", "layer", "n_useful_heads",
                                   "n_useful_mlps"])
    return summary.comparison_figure(accuracy, useful, edges, "t")


def test_heatmap_prints_the_values_it_colours():
    image, cells = heatmap_cells(planted_figure())
    coloured = np.ma.filled(image.get_array(), np.nan)
    # Rows in sweep order (F, G), columns the edges in alphabetical order.
    assert np.allclose(coloured, [[np.nan, 1.0, -0.5, 0.1], [-1.0, np.nan, np.nan, np.nan]],
                       equal_nan=True)
    assert set(cells) == {tuple(ix) for ix in np.argwhere(~np.isnan(coloured))}
    for (row, col), text in cells.items():
        assert float(text.get_text()) == pytest.approx(coloured[row, col], abs=0.005)
    assert "printed in each cell" in image.colorbar.ax.get_ylabel()
    assert "largest |score|" in image.colorbar.ax.get_ylabel()


def test_heatmap_text_contrasts_with_its_cell():
    image, cells = heatmap_cells(planted_figure())
    white, black = mcolors.to_rgb("white"), mcolors.to_rgb("black")
    assert mcolors.to_rgb(cells[0, 1].get_color()) == white  # +1: dark blue
    assert mcolors.to_rgb(cells[1, 0].get_color()) == white  # -1: dark red
    assert mcolors.to_rgb(cells[0, 3].get_color()) == black  # +0.1: near white
    assert sum(image.to_rgba(1.0)[:3]) < 1 and sum(image.to_rgba(0.1)[:3]) > 2.5


def test_heatmap_says_what_it_rests_on():
    fig = planted_figure()
    ax = fig.axes[2]
    assert "2 runs" in ax.get_title() and "4 distinct edges" in ax.get_title()
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == ["m1 cs1 F\nlargest |score| 0.8", "m1 cs1 G\nlargest |score| 2"]
    assert "none in: m1 cs1" in fig.axes[1].get_title()
    assert footnotes(fig) == []  # no run is ill-conditioned


def test_ill_conditioned_runs_are_named_in_table_and_figure(tmp_path, monkeypatch):
    reason = "the mean logit differences are only 0.03 logits apart"
    figures = []
    monkeypatch.setattr(summary, "save_figure", lambda fig, path, dpi: figures.append(fig))
    main(summary_command(tmp_path, tmp_path, {m: json.dumps(n) for m, n in USEFUL.items()},
                         reasons={"m1": reason}))
    edges = read_table(tmp_path / "edges_out.parquet")
    assert list(edges.columns) == ["model", "dataset", "feature", "rank", "upstream",
                                   "downstream", "score", "ill_conditioned",
                                   "ill_conditioned_reason"]
    flagged = edges[edges["model"] == "m1"]
    assert flagged["ill_conditioned"].tolist() == [True] * 3
    assert flagged["ill_conditioned_reason"].tolist() == [reason] * 3
    fine = edges[edges["model"] == "m2"]
    assert fine["ill_conditioned"].tolist() == [False] * 3
    assert fine["ill_conditioned_reason"].isna().all()

    (fig,) = figures
    rows = [t.get_text() for t in fig.axes[2].get_yticklabels()]
    assert rows[0].startswith("m1 cs1 ENGTABLENAME (ill-conditioned)\n")
    assert rows[1].startswith("m2 cs2 ENGTABLENAME\n")
    (footnote,) = footnotes(fig)
    words = " ".join(footnote.split())  # undo the wrapping
    assert f"m1 cs1 ENGTABLENAME (ill-conditioned): {reason}" in words
    assert "m2" not in words


def test_results_without_diagnostics_are_a_one_line_error(tmp_path, capsys):
    command = summary_command(tmp_path, tmp_path, {m: json.dumps(n) for m, n in USEFUL.items()})
    (tmp_path / "m2_eap_results.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(SystemExit) as exit:
        main(command)
    assert exit.value.code == 1
    message = capsys.readouterr().err.strip()
    assert str(tmp_path / "m2_eap_results.json") in message and "no diagnostics block" in message
