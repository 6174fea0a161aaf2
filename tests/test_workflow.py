"""The workflow end to end on a tiny configuration, and how it fails on bad input."""

import copy
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from safetensors.torch import load_file, save_file

from circuitflow.config import validate_config
from circuitflow.models.loader import load_model
from circuitflow.tables import read_table
from circuitflow.tasks import sorting
from workflow_run import REPO, TINY_CONFIG, dry_run_jobs, make_workdir, snakemake

pytestmark = pytest.mark.slow


def test_dry_run_lists_the_rules(tmp_path):
    out = snakemake(make_workdir(tmp_path, TINY_CONFIG), "-n").stdout
    for rule in ("generate_examples", "train_model", "clean_accuracy", "all"):
        assert rule in out


@pytest.mark.parametrize("model,dataset", [("tiny", "cs1"), ("sorter", "sort"), ("adder", "add")])
def test_tiny_workflow_outputs_are_consistent(tiny_workflow, model, dataset):
    examples = read_table(tiny_workflow / f"results/data/{dataset}/examples.parquet")
    clean = read_table(tiny_workflow / f"results/{model}/{dataset}/clean.parquet")
    assert len(examples) == TINY_CONFIG["data"]["n_examples"]
    assert clean["example_id"].tolist() == examples["example_id"].tolist()
    # The tiny models are trained to 90%: most examples right, for every later stage.
    assert clean["correct"].mean() > 0.5

    schema = pq.read_schema(tiny_workflow / f"results/{model}/{dataset}/clean.parquet")
    assert schema.field("answer_token_ids").type == pa.list_(pa.int32())

    loaded = load_model({"source": "local", "path": str(tiny_workflow / f"results/models/{model}")})
    tok = loaded.tokenizer
    for ex, row in zip(examples.itertuples(), clean.itertuples()):
        assert tok.decode(list(row.prompt_token_ids)).strip() == ex.prompt.strip()
        assert tok.decode(list(row.answer_token_ids)).strip() == ex.answer.strip()
        assert row.n_prompt_tokens == len(row.prompt_token_ids)
        assert len(row.token_roles) == row.n_prompt_tokens + row.n_answer_tokens
        assert "other" not in row.token_roles
        assert row.correct == pd.isna(row.first_wrong_answer_pos)

    for name in ("curve.parquet", "heldout_accuracy.parquet", "training_curve.png"):
        assert (tiny_workflow / f"results/{model}/training" / name).stat().st_size > 0
    # Every output of every (model, dataset) the config lists, and of each of its features.
    for feature in validate_config(TINY_CONFIG)["datasets"][dataset]["features"]:
        eap = tiny_workflow / f"results/{model}/{dataset}/eap/{feature}"
        assert len(read_table(eap / "pairs.parquet")) == 8
        assert read_table(eap / "faithfulness.parquet")["faithfulness"].notna().all()


def test_bad_config_stops_before_any_job(tmp_path):
    config = copy.deepcopy(TINY_CONFIG)
    config["clean"]["batch_size"] = -3
    result = snakemake(make_workdir(tmp_path, config), "--cores", "1", check=False)
    assert result.returncode != 0
    assert "config key 'clean.batch_size'" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_missing_model_directory_stops_before_any_job(tmp_path):
    config = copy.deepcopy(TINY_CONFIG)
    config["models"] = {"mine": {"source": "local", "path": str(tmp_path / "no_such_model"),
                                 "analyse_on": ["cs1"]}}
    result = snakemake(make_workdir(tmp_path / "wd", config), "--cores", "1", check=False)
    assert result.returncode != 0
    assert "no_such_model" in result.stdout + result.stderr
    assert not (tmp_path / "wd" / "results").exists()


def test_failing_stage_leaves_no_partial_output(tmp_path):
    broken_model = tmp_path / "broken_model"
    broken_model.mkdir()
    (broken_model / "config.json").write_text("{not json")
    config = copy.deepcopy(TINY_CONFIG)
    config["models"] = {"broken": {"source": "local", "path": str(broken_model),
                                   "analyse_on": ["cs1"]}}
    workdir = make_workdir(tmp_path / "wd", config)
    result = snakemake(workdir, "--cores", "1", "--keep-going", check=False)
    assert result.returncode != 0
    assert (workdir / "results/data/cs1/examples.parquet").exists()
    leftovers = [p for p in (workdir / "results").rglob("*") if "broken" in p.parts and p.is_file()]
    assert leftovers == []
    log = (workdir / "results/logs/clean_accuracy/broken_cs1.log").read_text()
    assert "broken_model" in log and "Traceback" not in log


def test_own_prompts_with_a_local_model_through_the_whole_dag(tiny_workflow, tmp_path):
    """A table of prompts of one's own, analysed with a model saved on disk (here a copy of the
    built-in sorter): every stage runs; replacing its weights in place reruns its jobs."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_workflow, workdir)
    model_dir = tmp_path / "mine"
    shutil.copytree(tiny_workflow / "results/models/sorter", model_dir)
    sort = validate_config(TINY_CONFIG)["datasets"]["sort"]
    drawn = sorting.pairs(sort, "INPUT_VALUE", 40, seed=11)
    pd.DataFrame({
        "prompt": drawn["clean_prompt"], "answer": drawn["clean_answer"],
        "corrupt_prompt": drawn["corrupt_prompt"], "corrupt_answer": drawn["corrupt_answer"],
        "class": drawn["changed_input"].astype(str),
    }).to_json(tmp_path / "own.jsonl", orient="records", lines=True)
    config = copy.deepcopy(TINY_CONFIG)
    config["datasets"]["own"] = {"task": "prompts", "path": str(tmp_path / "own.jsonl")}
    config["models"]["mine"] = {"source": "local", "path": str(model_dir), "analyse_on": ["own"]}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir, "--cores", "2", "--resources", "gpu=1")

    clean = read_table(workdir / "results/mine/own/clean.parquet")
    assert len(clean) == 24 and clean["correct"].mean() > 0.5
    assert read_table(workdir / "results/mine/own/node_ablation.parquet")["n_tried"].sum() > 0
    pairs = read_table(workdir / "results/mine/own/eap/CORRUPT/pairs.parquet")
    assert len(pairs) == 8 and pairs["token_roles"].map(lambda r: r[0] == "prompt_1").all()
    assert (workdir / "results/mine/own/eap/CORRUPT/faithfulness.png").stat().st_size > 0
    assert dry_run_jobs(workdir) == {}

    weights = model_dir / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v * 1.01 for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    planned = dry_run_jobs(workdir)
    assert planned.keys() >= {"clean_accuracy", "node_ablation", "corrupt_pairs", "eap"}
    assert planned["clean_accuracy"] == 1 and "train_model" not in planned


@pytest.mark.parametrize("configfile", ["config.yaml", *sorted(
    f"configs/{p.name}" for p in (REPO / "configs").glob("*.yaml"))])
def test_a_shipped_config_runs_its_own_models_and_datasets_only(tmp_path, configfile):
    workdir = make_workdir(tmp_path, yaml.safe_load((REPO / "config.yaml").read_text()))
    shutil.copytree(REPO / "configs", workdir / "configs")
    args = () if configfile == "config.yaml" else ("--configfile", configfile)
    shipped = validate_config(yaml.safe_load((REPO / configfile).read_text()))
    runs = [(m, d) for m, entry in shipped["models"].items() for d in entry["analyse_on"]]
    planned = dry_run_jobs(workdir, *args)
    builtin = [m for m, entry in shipped["models"].items() if entry["source"] == "builtin"]
    assert planned["train_model"] == len(builtin)
    assert planned["generate_examples"] == len({d for _, d in runs})
    assert planned["clean_accuracy"] == planned["node_ablation"] == len(runs)
    features = sum(len(shipped["datasets"][d]["features"]) for _, d in runs)
    assert planned["eap"] == planned["faithfulness"] == features


def test_lint_is_clean(tmp_path):
    result = snakemake(make_workdir(tmp_path, TINY_CONFIG), "--lint")
    out = result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in out
