"""The ablation stages end to end on a tiny model: tables, aggregation, useful nodes, plots."""

import json
import re

import matplotlib.colors
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from test_ablation_engine import own_continuations, peaky_model
from transformers import AutoTokenizer

from circuitflow.ablation import nodes, plots, positions, useful
from circuitflow.ablation.summary import summarize
from circuitflow.clean import CLEAN_SCHEMA
from circuitflow.cli import main
from circuitflow.errors import ConfigError
from circuitflow.proportions import wilson_interval
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
        "heatmaps.png", "heatmaps.plotly.json", "positions.png", "quanta.png", "roles.png",
    )}
    run(positions, params, clean=str(tmp / "clean.parquet"),
        detail=out["position_ablation.parquet"], summary=out["position_summary.parquet"])
    run(nodes, params, clean=str(tmp / "clean.parquet"),
        detail=out["node_ablation_detail.parquet"], summary=out["node_ablation.parquet"],
        by_role=out["node_ablation_by_role.parquet"])
    run(useful, params, summary=out["node_ablation.parquet"], out=out["useful_nodes.json"])
    run(
        plots,
        {"plots": {"dpi": 60, "min_count": 5}, "model": "tiny", "dataset": "cs1"},
        nodes=out["node_ablation.parquet"], positions=out["position_summary.parquet"],
        by_role=out["node_ablation_by_role.parquet"], useful=out["useful_nodes.json"],
        heatmaps=out["heatmaps.png"], heatmaps_interactive=out["heatmaps.plotly.json"],
        position_chart=out["positions.png"], quanta_map=out["quanta.png"],
        role_heatmap=out["roles.png"],
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
    clean, out = stage_outputs
    summary = read(out, "node_ablation.parquet")
    fig = plots.heatmaps_figure(summary, "tiny cs1", min_count=5)
    panels = [ax for ax in fig.axes if ax.get_ylabel() == "node"]
    assert len(panels) == N_LAYERS
    # Examples tried at each position, counted from the clean table: those long enough.
    lengths = clean["n_prompt_tokens"] + clean["n_answer_tokens"] - 1
    for layer, ax in enumerate(panels):
        assert [t.get_text() for t in ax.get_yticklabels()] == [
            f"l{layer}.h0", f"l{layer}.h1", f"l{layer}.h2", f"l{layer}.h3", f"l{layer}.mlp"
        ]
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels[0] == f"0 instruction n={len(clean)}" and f"2 eng_table n={len(clean)}" in labels
        assert labels == [f"{p} {label.split()[1]} n={(lengths > p).sum()}"
                          for p, label in enumerate(labels)]
        assert f"layer {layer}" in ax.get_title()
        grid = ax.images[0].get_array()
        mlp = summary[summary["node"] == f"l{layer}.mlp"].sort_values("position")
        enough = (mlp["n_tried"] >= 5).to_numpy()
        assert 0 < enough.sum() < len(mlp)  # the examples differ in length
        assert np.allclose(grid[-1, : len(mlp)][enough], mlp["fail_rate"][enough])
        assert np.ma.getmaskarray(grid)[-1, : len(mlp)].tolist() == (~enough).tolist()
    assert "tiny cs1" in fig._suptitle.get_text()
    assert any("fewer than 5 examples" in t.get_text() for t in fig.legends[0].get_texts())


def planted_summary(n_tried_last: int) -> pd.DataFrame:
    """Two nodes at three positions; position 2 rests on ``n_tried_last`` examples."""
    rows = []
    for node, layer in (("l0.h0", 0), ("l0.mlp", 0)):
        for position, n_tried, n_failed in ((0, 6, 3), (1, 6, 0), (2, n_tried_last, 2)):
            rows.append({"node": node, "layer": layer, "position": position, "role": "r",
                         "n_tried": n_tried, "n_failed": n_failed,
                         "fail_rate": 100 * n_failed / n_tried})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("min_count, masked", [(5, True), (2, False)])
def test_cells_resting_on_few_examples_are_greyed(min_count, masked):
    summary = planted_summary(n_tried_last=2)
    fig = plots.heatmaps_figure(summary, "planted", min_count)
    ax = fig.axes[0]
    rates, grey = ax.images[0].get_array(), ax.images[1].get_array()
    expected_mask = np.array([[False, False, masked]] * 2)
    assert np.ma.getmaskarray(rates).tolist() == expected_mask.tolist()
    assert (~np.ma.getmaskarray(grey)).tolist() == expected_mask.tolist()
    assert rates[:, :2].tolist() == [[50, 0], [50, 0]]
    if not masked:
        assert rates[:, 2].tolist() == [100, 100]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0 r n=6", "1 r n=6", "2 r n=2"]
    page = plots.interactive_heatmaps(summary, "planted", min_count)
    coloured, greyed = page.data
    assert np.isnan(np.asarray(coloured.z, float)[:, 2]).tolist() == [masked, masked]
    assert (~np.isnan(np.asarray(greyed.z, float)[:, 2])).tolist() == [masked, masked]
    counts = np.asarray(coloured.customdata)
    assert counts[..., 0].tolist() == [[6, 6, 2]] * 2 and counts[..., 1].tolist() == [[3, 0, 2]] * 2
    assert "n_tried" in coloured.hovertemplate and "n_failed" in coloured.hovertemplate


def test_examples_in_title_count_position_zero():
    summary = planted_summary(n_tried_last=2)
    assert plots.figure_title("m", "d", summary) == "m d, 6 examples"
    assert plots.figure_title("m", "d", summary.iloc[:0]) == "m d, 0 examples"


@pytest.mark.parametrize("k, n", [(0, 2), (2, 2), (1, 4), (7, 20), (50, 100), (3, 3)])
def test_wilson_interval_matches_scipy(k, n):
    stats = pytest.importorskip("scipy.stats")
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(k, n)
    assert (float(low), float(high)) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_wilson_interval_closed_forms():
    z = 1.959963984540054  # the 97.5% normal quantile
    low, high = wilson_interval([0, 5, 2], [5, 5, 0])
    # With no successes the interval is [0, z^2 / (n + z^2)], and mirrored for all successes.
    assert low[:2] == pytest.approx([0, 5 / (5 + z**2)])
    assert high[:2] == pytest.approx([z**2 / (5 + z**2), 1])
    assert np.isnan(low[2]) and np.isnan(high[2])


def test_wilson_interval_holds_the_rate_exactly_at_none_and_all():
    # Rounding once put the bound at 0 of n successes a hair above 0 (n = 10, 13, 34, ...),
    # which made the position chart's error bars negative and its stage fail.
    n = np.arange(1, 2001)
    for k in (np.zeros_like(n), n, n // 3):
        low, high = wilson_interval(k, n)
        assert np.all(low <= k / n) and np.all(k / n <= high)
    assert np.all(wilson_interval(np.zeros_like(n), n)[0] == 0)
    assert np.all(wilson_interval(n, n)[1] == 1)


def test_position_chart_has_wilson_bars_and_counts(stage_outputs):
    _, out = stage_outputs
    summary = read(out, "position_summary.parquet")
    fig = plots.positions_figure(summary, "tiny cs1", min_count=5)
    ax = fig.axes[0]
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert ax.get_ylabel() == "fail %" and len(bars.patches) == len(summary)
    assert [p.get_height() for p in bars.patches] == pytest.approx(list(summary["fail_rate"]))
    stats = pytest.importorskip("scipy.stats")
    segments = bars.errorbar.lines[2][0].get_segments()
    for row, segment in zip(summary.itertuples(), segments):
        ci = stats.binomtest(int(row.n_failed), int(row.n_tried)).proportion_ci(method="wilson")
        assert segment[:, 1] == pytest.approx([100 * ci.low, 100 * ci.high])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert [int(label.rsplit("n=", 1)[1]) for label in labels] == list(summary["n_tried"])
    few = (summary["n_tried"] < 5).to_numpy()
    assert few.any() and not few.all()
    grey = matplotlib.colors.to_rgba(plots.LOW_COUNT)
    assert [p.get_facecolor() == grey for p in bars.patches] == few.tolist()


def test_role_order_is_the_median_first_position():
    """Role b starts at 1, 1, 5 (median 1), role a at 2, 2, 0 (median 2): b comes first."""
    detail = pd.DataFrame({
        "example_id": [0] * 4 + [1] * 4 + [2] * 6,
        "position": [0, 1, 2, 3] * 2 + [0, 1, 2, 3, 4, 5],
        "role": ["s", "b", "a", "a"] * 2 + ["a", "c", "c", "c", "c", "b"],
        "failed": [True, False] * 7, "logprob_drop": 0.0,
    })
    detail["node"], detail["layer"], detail["head"] = "l0.mlp", 0, None
    table = summarize(detail, ["layer", "head", "node", "role"])
    first = dict(zip(table["role"], table["first_position"]))
    assert first == {"s": 0, "b": 1, "a": 2, "c": 1}
    assert dict(zip(table["role"], table["n_examples"])) == {"a": 3, "b": 3, "c": 1, "s": 2}
    assert dict(zip(table["role"], table["n_tried"])) == {"a": 5, "b": 3, "c": 4, "s": 2}
    assert plots.role_order(table) == ["s", "b", "c", "a"]  # ties by name


def test_role_heatmap_shows_every_node_and_role(stage_outputs):
    clean, out = stage_outputs
    by_role = read(out, "node_ablation_by_role.parquet")
    fig = plots.role_figure(by_role, "tiny cs1", min_count=5)
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == [name_of(l, h) for l in range(N_LAYERS) for h in [*range(N_HEADS), None]]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    roles = [label.split()[0] for label in labels]
    # Independently: each role's first position in each clean example, median over examples.
    firsts = {}
    for ex in clean.itertuples():
        seen = ex.token_roles[: ex.n_prompt_tokens + ex.n_answer_tokens - 1]
        for role in dict.fromkeys(seen):
            firsts.setdefault(role, []).append(list(seen).index(role))
    assert roles == sorted(firsts, key=lambda r: (np.median(firsts[r]), r))
    assert roles[:2] == ["instruction", "eng_table"] and roles[-1] == "response"
    assert labels == [f"{r} n={len(firsts[r])}" for r in roles]
    grid = ax.images[0].get_array()
    for (r, c), rate in np.ndenumerate(grid.data):
        row = by_role[(by_role["node"] == rows[r]) & (by_role["role"] == roles[c])]
        assert rate == pytest.approx(row["fail_rate"].iloc[0])
        assert np.ma.getmaskarray(grid)[r, c] == (len(firsts[roles[c]]) < 5)
    assert "fail %" in [a.get_ylabel() for a in fig.axes]  # the colour bar


def test_quanta_map_rows_and_cells(stage_outputs):
    _, out = stage_outputs
    useful = json.loads(out["useful_nodes.json"].read_text())
    summary = read(out, "node_ablation.parquet")
    fig = plots.quanta_figure(useful, summary, "tiny cs1", min_count=5)
    panels = [ax for ax in fig.axes if ax.get_ylabel() == "node"]
    order = sorted({(n["layer"], not n["is_head"], n["num"]) for n in useful})
    for ax in panels:
        rows = [t.get_text() for t in ax.get_yticklabels()]
        assert rows == [f"l{l}.mlp" if mlp else f"l{l}.h{h}" for l, mlp, h in order]
    texts = [t.get_text() for ax in panels for t in ax.texts]
    assert sorted(texts) == sorted(n["tags"][0][6:] for n in useful)
    assert "fail %" in [a.get_ylabel() for a in fig.axes]


def test_quanta_map_of_a_long_sequence_is_in_panels():
    """95 positions in runs of 10 of one role: 4 runs per panel of 40, so 3 panels."""
    useful = [{"position": p, "layer": 0, "is_head": True, "num": p % 2, "tags": ["Fail%:50"]}
              for p in range(95)]
    summary = pd.DataFrame({
        "node": [f"l0.h{p % 2}" for p in range(95)], "layer": 0, "position": range(95),
        "role": [f"role{p // 10}" for p in range(95)], "n_tried": [2] * 5 + [9] * 90,
        "n_failed": 1, "fail_rate": 50.0,
    })
    fig = plots.quanta_figure(useful, summary, "long", min_count=5)
    panels = [ax for ax in fig.axes if ax.get_ylabel() == "node"]
    assert len(panels) == 3
    columns = [[int(t.get_text().split()[0]) for t in ax.get_xticklabels()] for ax in panels]
    assert columns == [list(range(40)), list(range(40, 80)), list(range(80, 95))]
    assert all(ax.get_xlim() == (-0.5, 39.5) for ax in panels)
    assert np.ma.getmaskarray(panels[0].images[0].get_array())[:, :5].all()  # n=2 < 5: greyed
    assert not np.ma.getmaskarray(panels[1].images[0].get_array()).all()
    # A run longer than a panel is split; one that fits starts a new panel rather than split.
    def sizes(first_run):
        roles = {p: "a" if p < first_run else "b" for p in range(60)}
        return [len(panel) for panel in plots.role_panels(list(range(60)), roles, 40)]

    assert sizes(50) == [40, 20]  # a: 40 + 10, then b's 10 fit beside a's last 10
    assert sizes(30) == [30, 30]  # b (30) would not fit beside a (30): a panel of its own


def test_plot_files_are_readable_images(stage_outputs):
    _, out = stage_outputs
    for name in ("heatmaps.png", "positions.png", "quanta.png", "roles.png"):
        image = matplotlib.image.imread(out[name])
        assert image.shape[0] > 100 and image.shape[1] > 200, name
        assert image[..., :3].std() > 0.05, f"{name} is blank"
    page = out["heatmaps.plotly.json"].read_text()
    assert "layer 1" in page and "eng_table" in page


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
        {"plots": {"dpi": 50, "min_count": 5}, "model": "tiny", "dataset": "cs1"},
        nodes=paths["summary"], positions=tmp_path / "ps.parquet", by_role=paths["by_role"],
        useful=paths["useful"], heatmaps=tmp_path / "h.png", heatmaps_interactive=tmp_path / "h.plotly.json",
        position_chart=tmp_path / "p.png", quanta_map=tmp_path / "q.png",
        role_heatmap=tmp_path / "r.png",
    )
    for name in ("h.png", "p.png", "q.png", "r.png"):
        assert matplotlib.image.imread(tmp_path / name).shape[0] > 50, name


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
            f"positions={out['position_summary.parquet']}",
            f"by_role={out['node_ablation_by_role.parquet']}", f"useful={truncated}",
            *(f"{name}={plots_dir / name}" for name in plots.STAGE.outputs),
            "--params", json.dumps({"plots": {"dpi": 50, "min_count": 5}, "model": "tiny",
                                    "dataset": "cs1"}),
        ])
    assert exit.value.code == 1
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and message.startswith("circuitflow ablation-plots: error: ")
    assert str(truncated) in message and "not valid JSON" in message
    assert list(plots_dir.iterdir()) == []
