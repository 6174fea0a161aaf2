"""The stage contract: every stage's declaration matches what it runs, reads and imports."""

import csv
import dataclasses
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import circuitflow
from circuitflow.config import validate_config
from circuitflow.rules import REGISTRY_MODULE, code_inputs, job_params, stage
from circuitflow.registry import REGISTRY
from circuitflow.stage import Params, UndeclaredKey, load
from workflow_run import TINY_CONFIG, snakemake

STAGES = sorted(REGISTRY)


@pytest.mark.parametrize("name", STAGES)
def test_the_workflow_reads_the_declaration_the_stage_runs_with(name):
    imported = load(name)
    assert dataclasses.replace(imported, run=None) == stage(name)


@pytest.mark.parametrize("name", STAGES)
def test_declaration_names_the_arguments_run_takes(name):
    declared = load(name)
    taken = list(inspect.signature(declared.run).parameters)
    assert taken[0] == "params"
    assert set(taken[1:]) == set(declared.inputs) | set(declared.outputs)
    assert set(declared.many) <= set(declared.inputs)


@pytest.mark.parametrize("name", STAGES)
def test_every_declared_key_is_a_config_key(name):
    config = validate_config(TINY_CONFIG)
    wildcards = {"model": "tiny", "dataset": "cs1", "feature": "ENGTABLENAME"}
    job = {"runs": [], "edge_runs": [], "pair_runs": []}
    params = job_params(name, config, wildcards, **job)
    assert json.loads(json.dumps(params)) == params  # what the rule passes on the command line


def test_params_refuse_a_key_the_stage_did_not_declare():
    params = Params("eap", {"eap": {"top_n": 3}, "model": {"source": "builtin"}})
    assert params["eap"]["top_n"] == 3
    assert params["model"].get("id") is None  # an entry's optional keys read as usual
    with pytest.raises(UndeclaredKey, match=r"stage eap reads 'eap\.ig_steps'"):
        params["eap"].get("ig_steps", 5)
    with pytest.raises(UndeclaredKey, match="'plots'"):
        params["plots"]


def test_conditional_key_only_under_its_condition():
    config = validate_config(TINY_CONFIG)
    wildcards = {"model": "tiny", "dataset": "cs1", "feature": "ENGTABLENAME"}
    config["eap"]["method"] = "eap"
    assert "ig_steps" not in job_params("eap", config, wildcards)["eap"]
    config["eap"]["method"] = "eap-ig"
    assert job_params("eap", config, wildcards)["eap"]["ig_steps"] == config["eap"]["ig_steps"]


def _modules_loaded_by_importing(module: str) -> set[str]:
    script = (
        f"import sys, circuitflow.cli, {module}; "
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items() "
        "if n.split('.')[0] == 'circuitflow' and getattr(m, '__file__', None)))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("name", STAGES)
def test_code_inputs_hold_every_module_the_stage_imports(name):
    # An independent account of the imports: what Python itself loads, not the source scan.
    loaded = _modules_loaded_by_importing(REGISTRY[name])
    missing = loaded - set(code_inputs(name)) - {_module_file(REGISTRY_MODULE)}
    assert not missing, f"{name} imports {sorted(missing)} but its code inputs lack them"


def _module_file(module: str) -> str:
    path = Path(circuitflow.__file__).parent.joinpath(*module.split(".")[1:])
    return str(path / "__init__.py" if path.is_dir() else path.with_suffix(".py"))


@pytest.mark.slow
def test_every_job_ran_only_modules_among_its_code_inputs(tiny_workflow):
    # Each stage logs the package modules it ran; Snakemake's summary lists each job's inputs.
    out = snakemake(tiny_workflow, "--detailed-summary").stdout
    rows = list(csv.DictReader(out[out.index("output_file\t"):].splitlines(), delimiter="\t"))
    checked = set()
    for row in rows:
        log_file = row["log-file(s)"].strip()
        if not log_file or log_file in checked:
            continue
        checked.add(log_file)
        ran = re.search(r"package modules run: (.*)", (tiny_workflow / log_file).read_text())
        assert ran, f"{log_file}: the stage did not finish"
        inputs = set(row["input-file(s)"].split(","))
        missing = {_module_file(m) for m in ran.group(1).split() if m != REGISTRY_MODULE} - inputs
        assert not missing, f"{row['rule']} ({log_file}) ran {sorted(missing)} outside its code inputs"
    assert {r["rule"] for r in rows} >= {"train_model", "generate_examples", "eap", "summary"}
