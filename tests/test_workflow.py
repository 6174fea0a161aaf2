"""The workflow end to end on a tiny configuration, and how it fails on bad input."""

import copy

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from circuitflow.models.loader import load_model
from circuitflow.tables import read_table
from workflow_run import TINY_CONFIG, make_workdir, snakemake

pytestmark = pytest.mark.slow


def test_dry_run_lists_the_rules(tmp_path):
    out = snakemake(make_workdir(tmp_path, TINY_CONFIG), "-n").stdout
    for rule in ("generate_examples", "train_model", "clean_accuracy", "all"):
        assert rule in out


def test_tiny_workflow_outputs_are_consistent(tiny_workflow):
    examples = read_table(tiny_workflow / "results/data/cs1/examples.parquet")
    clean = read_table(tiny_workflow / "results/tiny/cs1/clean.parquet")
    assert len(examples) == TINY_CONFIG["data"]["n_examples"]
    assert clean["example_id"].tolist() == examples["example_id"].tolist()

    schema = pq.read_schema(tiny_workflow / "results/tiny/cs1/clean.parquet")
    assert schema.field("answer_token_ids").type == pa.list_(pa.int32())

    loaded = load_model({"source": "builtin", "path": str(tiny_workflow / "results/models/tiny")})
    tok = loaded.tokenizer
    for ex, row in zip(examples.itertuples(), clean.itertuples()):
        assert tok.decode(list(row.prompt_token_ids)) == ex.prompt
        assert tok.decode(list(row.answer_token_ids)) == ex.sql
        assert row.n_prompt_tokens == len(row.prompt_token_ids)
        assert len(row.token_roles) == row.n_prompt_tokens + row.n_answer_tokens
        assert row.correct == pd.isna(row.first_wrong_answer_pos)
        if row.correct:
            assert row.predicted_text == ex.sql

    for name in ("curve.parquet", "heldout_accuracy.parquet", "training_curve.png"):
        assert (tiny_workflow / "results/tiny/training" / name).stat().st_size > 0
    logs = list((tiny_workflow / "results/logs").rglob("*.log"))
    assert {p.parent.name for p in logs} >= {"generate_examples", "train_model", "clean_accuracy"}


def test_bad_config_stops_before_any_job(tmp_path):
    config = copy.deepcopy(TINY_CONFIG)
    config["clean"]["batch_size"] = -3
    result = snakemake(make_workdir(tmp_path, config), "--cores", "1", check=False)
    assert result.returncode != 0
    assert "config key 'clean.batch_size'" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_missing_model_directory_stops_before_any_job(tmp_path):
    config = copy.deepcopy(TINY_CONFIG)
    config["models"] = {"mine": {"source": "local", "path": str(tmp_path / "no_such_model")}}
    result = snakemake(make_workdir(tmp_path / "wd", config), "--cores", "1", check=False)
    assert result.returncode != 0
    assert "no_such_model" in result.stdout + result.stderr
    assert not (tmp_path / "wd" / "results").exists()


def test_failing_stage_leaves_no_partial_output(tmp_path):
    broken_model = tmp_path / "broken_model"
    broken_model.mkdir()
    (broken_model / "config.json").write_text("{not json")
    config = copy.deepcopy(TINY_CONFIG)
    config["models"] = {"broken": {"source": "local", "path": str(broken_model)}}
    workdir = make_workdir(tmp_path / "wd", config)
    result = snakemake(workdir, "--cores", "1", "--keep-going", check=False)
    assert result.returncode != 0
    assert (workdir / "results/data/cs1/examples.parquet").exists()
    leftovers = [p for p in (workdir / "results").rglob("*") if "broken" in p.parts and p.is_file()]
    assert leftovers == []
    log = (workdir / "results/logs/clean_accuracy/broken_cs1.log").read_text()
    assert "broken_model" in log


def test_lint_is_clean(tmp_path):
    result = snakemake(make_workdir(tmp_path, TINY_CONFIG), "--lint")
    out = result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in out


def test_report_has_every_figure_with_its_caption(tiny_workflow, tmp_path):
    report = tmp_path / "report.html"
    snakemake(tiny_workflow, "--report", str(report))
    html = report.read_text()
    figures = ["training_curve.png", "comparison.png", "ablation_heatmaps.png",
               "ablation_heatmaps.html", "position_fail_rate.png", "quanta_map.png",
               "sankey.png", "sankey.html", "faithfulness.png"]
    for figure in figures:
        assert figure in html, figure
    for caption in ("Training curve of the built-in model", "Sweep summary over every",
                    "Node ablation of model", "Token-position ablation of model",
                    "Quanta map of model", "Strongest edges found by edge attribution",
                    "Faithfulness of EAP circuits"):
        assert caption in html, caption
