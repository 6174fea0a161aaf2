"""The ablation stages end to end on a tiny model: tables, aggregation, useful nodes, plots."""

import json
import re

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from test_ablation_engine import own_continuations, peaky_model
from transformers import AutoTokenizer

from circuitflow.ablation import nodes, plots, positions, useful
from circuitflow.clean import CLEAN_SCHEMA
from circuitflow.cli import main
from circuitflow.errors import ConfigError
from circuitflow.stage import Params
from circuitflow.tables import write_table

N_LAYERS, N_HEADS = 2, 4  # tiny_config's


def name_of(layer, head):
    """A node's name from its table columns (head null for the MLP), written out here."""
    return f"l{layer}.mlp" if pd.isna(head) else f"l{layer}.h{head}"


def run(stage, params, **paths):
    """Runs a stage module as the command line does: its params refuse undeclared keys."""
    stage.STAGE.run(Params(stage.STAGE.name, params), **paths)


def roles_for(prompt, answer):
    """Role labels shaped like the real ones: some named spans, the rest by prompt part."""
    roles = ["instruction"] * len(prompt)
    roles[2] = "eng_table"
    roles[-3:] = ["context", "def_field_1", "template"]
    return roles + ["sql_field_1"] + ["response"] * (len(answer) - 1)


@pytest.fixture(scope="module")
def stage_outputs(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablation")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("gpt2"))
    model = peaky_model("gpt2", len(tokenizer))
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    prompts, answers = own_continuations(model, 7, seed=5)
    rows = []
    for i, (p, a) in enumerate(zip(prompts, answers)):
        rows.append({
            "example_id": 10 + i, "correct": i != 2, "prompt_token_ids": p,
            "answer_token_ids": a, "n_prompt_tokens": len(p), "n_answer_tokens": len(a),
            "first_wrong_answer_pos": None if i != 2 else 0, "predicted_text": "",
            "token_roles": roles_for(p, a),
        })
    clean = pd.DataFrame(rows, columns=CLEAN_SCHEMA.names)
    write_table(clean, tmp / "clean.parquet", schema=CLEAN_SCHEMA)
    params = {
        "model": {"source": "local", "path": str(tmp / "model")}, "device": "cpu",
        "ablation": {"n_examples": 5, "method": "mean", "seed": 0, "useful_threshold": 30,
                     "batch_size": 0},
    }
    out = {name: tmp / name for name in (
        "position_ablation.parquet", "position_summary.parquet", "node_ablation_detail.parquet",
        "node_ablation.parquet", "node_ablation_by_role.parquet", "useful_nodes.json",
        "heatmaps.png", "heatmaps.html", "positions.png", "quanta.png",
    )}
    run(positions, params, clean=str(tmp / "clean.parquet"),
        detail=out["position_ablation.parquet"], summary=out["position_summary.parquet"])
    run(nodes, params, clean=str(tmp / "clean.parquet"),
        detail=out["node_ablation_detail.parquet"], summary=out["node_ablation.parquet"],
        by_role=out["node_ablation_by_role.parquet"])
    run(useful, params, summary=out["node_ablation.parquet"], out=out["useful_nodes.json"])
    run(
        plots,
        {"plots": {"dpi": 60}, "model": "tiny", "dataset": "cs1"},
        nodes=out["node_ablation.parquet"], positions=out["position_summary.parquet"],
        useful=out["useful_nodes.json"], heatmaps=out["heatmaps.png"],
        heatmaps_page=out["heatmaps.html"], position_chart=out["positions.png"],
        quanta_map=out["quanta.png"],
    )
    return clean[clean["correct"]].head(5), out


def read(out, name):
    return pd.read_parquet(out[name])


def test_position_table_has_every_example_and_position(stage_outputs):
    clean, out = stage_outputs
    detail = read(out, "position_ablation.parquet")
    assert list(detail.columns) == ["example_id", "position", "role", "failed", "logprob_drop"]
    expected = [(ex.example_id, p, ex.token_roles[p]) for ex in clean.itertuples()
                for p in range(ex.n_prompt_tokens + ex.n_answer_tokens - 1)]
    assert list(zip(detail["example_id"], detail["position"], detail["role"])) == expected
    assert 12 not in set(detail["example_id"])  # the incorrect example
    assert detail["failed"].any() and not detail["failed"].all()


def test_summaries_count_the_detail_rows(stage_outputs):
    _, out = stage_outputs
    for detail_name, summary_name, keys in [
        ("position_ablation.parquet", "position_summary.parquet", ["position"]),
        ("node_ablation_detail.parquet", "node_ablation.parquet",
         ["layer", "head", "node", "position"]),
        ("node_ablation_detail.parquet", "node_ablation_by_role.parquet",
         ["layer", "head", "node", "role"]),
    ]:
        detail, summary = read(out, detail_name), read(out, summary_name)
        assert summary["n_tried"].sum() == len(detail)
        expected = (detail.groupby(keys, dropna=False)["failed"].agg(["size", "sum"])
                    .reset_index())
        merged = summary.merge(expected, on=keys, validate="one_to_one")
        assert len(merged) == len(summary) == len(expected)
        assert (merged["n_tried"] == merged["size"]).all()
        assert (merged["n_failed"] == merged["sum"]).all()
        assert np.allclose(merged["fail_rate"], 100 * merged["sum"] / merged["size"])
        assert {"n_tried", "n_failed", "fail_rate", "mean_logprob_drop"} <= set(summary.columns)


def test_node_detail_covers_every_head_and_mlp(stage_outputs):
    clean, out = stage_outputs
    detail = read(out, "node_ablation_detail.parquet")
    assert list(detail.columns) == [
        "example_id", "layer", "head", "node", "position", "role", "failed", "logprob_drop"
    ]
    n_positions = sum(clean["n_prompt_tokens"] + clean["n_answer_tokens"] - 1)
    assert len(detail) == n_positions * N_LAYERS * (N_HEADS + 1)
    assert list(detail["node"]) == [name_of(l, h) for l, h in zip(detail["layer"], detail["head"])]
    mlp = detail[detail["head"].isna()]
    assert len(mlp) == n_positions * N_LAYERS and mlp["node"].str.endswith(".mlp").all()
    assert set(detail["head"].dropna()) == set(range(N_HEADS))
    # Model order within an example: layer, its heads, its MLP.
    first = detail[detail["example_id"] == detail["example_id"].iloc[0]]
    order = first.drop_duplicates("node")["node"].tolist()
    assert order == [name_of(l, h) for l in range(N_LAYERS) for h in [*range(N_HEADS), None]]
    for name in ("node_ablation.parquet", "node_ablation_by_role.parquet"):
        table = read(out, name)
        assert list(table.columns[:3]) == ["layer", "head", "node"]
        assert list(table["node"]) == [name_of(l, h) for l, h in zip(table["layer"], table["head"])]
    assert detail["failed"].any()
    by_role = read(out, "node_ablation_by_role.parquet")
    assert {"eng_table", "sql_field_1", "response"} <= set(by_role["role"])


def test_useful_nodes_are_the_nodes_over_the_threshold(stage_outputs):
    _, out = stage_outputs
    useful = json.loads(out["useful_nodes.json"].read_text())
    summary = read(out, "node_ablation.parquet")
    over = summary[summary["fail_rate"] > 30]
    assert 0 < len(useful) == len(over) < len(summary)
    for node in useful:
        assert set(node) == {"position", "layer", "is_head", "num", "tags"}
        assert isinstance(node["is_head"], bool) and re.fullmatch(r"Fail%:\d+", node["tags"][0])
        name = f"l{node['layer']}." + (f"h{node['num']}" if node["is_head"] else "mlp")
        row = over[(over["position"] == node["position"]) & (over["node"] == name)]
        assert len(row) == 1 and int(node["tags"][0][6:]) == round(row["fail_rate"].iloc[0])
    keys = [(n["position"], n["layer"], not n["is_head"], n["num"]) for n in useful]
    assert keys == sorted(keys)


def test_heatmaps_have_a_labelled_panel_per_layer(stage_outputs):
    _, out = stage_outputs
    summary = read(out, "node_ablation.parquet")
    fig = plots.heatmaps_figure(summary, "tiny cs1")
    panels = [ax for ax in fig.axes if ax.get_ylabel() == "node"]
    assert len(panels) == N_LAYERS
    for layer, ax in enumerate(panels):
        assert [t.get_text() for t in ax.get_yticklabels()] == [
            f"l{layer}.h0", f"l{layer}.h1", f"l{layer}.h2", f"l{layer}.h3", f"l{layer}.mlp"
        ]
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels[0] == "0 instruction" and "2 eng_table" in labels
        assert f"layer {layer}" in ax.get_title()
        grid = ax.images[0].get_array()
        expected = summary[summary["node"] == f"l{layer}.mlp"]
        assert np.allclose(grid[-1, : len(expected)], expected.sort_values("position")["fail_rate"])


def test_position_chart_and_quanta_map(stage_outputs):
    _, out = stage_outputs
    summary = read(out, "position_summary.parquet")
    fig = plots.positions_figure(summary, "tiny cs1")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "fail %" and len(ax.patches) == len(summary)
    assert [p.get_height() for p in ax.patches] == pytest.approx(list(summary["fail_rate"]))
    useful = json.loads(out["useful_nodes.json"].read_text())
    labels = plots.position_labels(read(out, "node_ablation.parquet"))
    fig = plots.quanta_figure(useful, labels, "tiny cs1")
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    order = sorted({(n["layer"], not n["is_head"], n["num"]) for n in useful})
    assert rows == [f"l{l}.mlp" if mlp else f"l{l}.h{h}" for l, mlp, h in order]
    assert sorted(t.get_text() for t in ax.texts) == sorted(n["tags"][0][6:] for n in useful)


def test_plot_files_are_readable_images(stage_outputs):
    _, out = stage_outputs
    for name in ("heatmaps.png", "positions.png", "quanta.png"):
        image = matplotlib.image.imread(out[name])
        assert image.shape[0] > 100 and image.shape[1] > 200, name
        assert image[..., :3].std() > 0.05, f"{name} is blank"
    page = out["heatmaps.html"].read_text()
    assert "plotly" in page and "layer 1" in page and "eng_table" in page


def test_no_correct_example_gives_empty_tables_and_plots(stage_outputs, tmp_path):
    """Even under resample, which needs two examples: there is nothing to ablate."""
    _, out = stage_outputs
    clean = pd.read_parquet(out["position_ablation.parquet"].parent / "clean.parquet")
    clean["correct"] = False
    write_table(clean, tmp_path / "clean.parquet", schema=CLEAN_SCHEMA)
    params = {"model": {"source": "local", "path": str(out["heatmaps.png"].parent / "model")},
              "device": "cpu", "ablation": {"n_examples": 5, "method": "resample", "seed": 0,
                                            "useful_threshold": 0, "batch_size": 0}}
    paths = {k: tmp_path / f"{k}.out" for k in ("detail", "summary", "by_role", "useful")}
    run(nodes, params, clean=str(tmp_path / "clean.parquet"),
        **{k: v for k, v in paths.items() if k != "useful"})
    assert len(pd.read_parquet(paths["summary"])) == 0
    run(useful, params, summary=paths["summary"], out=paths["useful"])
    assert json.loads(paths["useful"].read_text()) == []
    run(positions, params, clean=str(tmp_path / "clean.parquet"),
        detail=tmp_path / "p.parquet", summary=tmp_path / "ps.parquet")
    run(
        plots,
        {"plots": {"dpi": 50}, "model": "tiny", "dataset": "cs1"},
        nodes=paths["summary"], positions=tmp_path / "ps.parquet", useful=paths["useful"],
        heatmaps=tmp_path / "h.png", heatmaps_page=tmp_path / "h.html",
        position_chart=tmp_path / "p.png", quanta_map=tmp_path / "q.png",
    )
    assert matplotlib.image.imread(tmp_path / "h.png").shape[0] > 50


@pytest.mark.parametrize("n_examples, n_correct", [(1, 6), (5, 1)])
def test_resample_with_one_example_is_a_config_error(stage_outputs, tmp_path, n_examples,
                                                     n_correct):
    _, out = stage_outputs
    clean = pd.read_parquet(out["position_ablation.parquet"].parent / "clean.parquet")
    clean["correct"] = clean.index < n_correct
    write_table(clean, tmp_path / "clean.parquet", schema=CLEAN_SCHEMA)
    params = {"model": {"source": "local", "path": str(out["heatmaps.png"].parent / "model")},
              "device": "cpu", "ablation": {"n_examples": n_examples, "method": "resample",
                                            "seed": 0, "batch_size": 0}}
    paths = {k: tmp_path / f"{k}.parquet" for k in ("detail", "summary", "by_role")}
    with pytest.raises(ConfigError) as error:
        run(nodes, params, clean=str(tmp_path / "clean.parquet"), **paths)
    message = str(error.value)
    assert "\n" not in message and "ablation.method" in message
    assert "ablation.n_examples" in message and "mean or zero" in message
    assert ("is 1" if n_examples == 1 else "only one example") in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.parquet"]


def test_truncated_useful_nodes_is_a_one_line_error(stage_outputs, tmp_path, capsys):
    _, out = stage_outputs
    truncated = tmp_path / "useful_nodes.json"
    truncated.write_text(out["useful_nodes.json"].read_text()[:40])
    plots_dir = tmp_path / "plots"
    plots_dir.mkdir()
    with pytest.raises(SystemExit) as exit:
        main([
            "ablation-plots", f"nodes={out['node_ablation.parquet']}",
            f"positions={out['position_summary.parquet']}", f"useful={truncated}",
            *(f"{name}={plots_dir / name}" for name in plots.STAGE.outputs),
            "--params", json.dumps({"plots": {"dpi": 50}, "model": "tiny", "dataset": "cs1"}),
        ])
    assert exit.value.code == 1
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and message.startswith("circuitflow ablation-plots: error: ")
    assert str(truncated) in message and "not valid JSON" in message
    assert list(plots_dir.iterdir()) == []
