"""The tiny workflow's sorting model (clean accuracy, node ablation, EAP) on a real single-node
SLURM cluster, submitted through profiles/slurm.

SLURM is installed with apt when missing; the test is skipped only where SLURM cannot be installed
or started, with the reason.
"""

import copy
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

import slurm_cluster
from workflow_run import REPO, TINY_CONFIG, dry_run_jobs, make_workdir, snakemake

pytestmark = pytest.mark.slow

PROFILE = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())

# The tiny config's sorting model and dataset only (it trains in seconds): the other models are
# the same kinds of jobs again, and the test node's 2 CPUs would run them two at a time, for
# minutes.
SLURM_CONFIG = copy.deepcopy(TINY_CONFIG)
SLURM_CONFIG["models"] = {"sorter": TINY_CONFIG["models"]["sorter"]}
SLURM_CONFIG["datasets"] = {"sort": TINY_CONFIG["datasets"]["sort"]}
# Rules on the GPU and on the CPU, one job each: every job pays sbatch, the status polling and a
# Python start on the node, and the rest of the DAG is more jobs of the same kind.
TARGETS = (
    "results/sorter/sort/clean.parquet",
    "results/sorter/sort/useful_nodes.json",
    "results/sorter/sort/eap/INPUT_VALUE/top_edges.parquet",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        slurm_cluster.ensure_installed()
        cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.SlurmUnavailable as reason:
        pytest.skip(f"no SLURM cluster: {reason}")
    yield cluster
    cluster.stop()


def gpu_rules_in_workflow() -> set[str]:
    """Rules that declare `resources: gpu=1` in workflow/rules/*.smk."""
    rules = set()
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        for block in re.split(r"^(?=rule )", smk.read_text(), flags=re.M):
            if block.startswith("rule ") and re.search(r"^\s+gpu=1,?\s*$", block, flags=re.M):
                rules.add(block.split()[1].rstrip(":"))
    return rules


def test_every_gpu_rule_asks_slurm_for_a_gpu():
    gpu_rules = gpu_rules_in_workflow()
    assert {"train_model", "clean_accuracy"} <= gpu_rules
    for rule in gpu_rules:
        settings = PROFILE["set-resources"].get(rule, {})
        # The plugin's own test for a GPU job.
        assert "gpu" in settings.get("gres", ""), f"profiles/slurm: {rule} asks for no GPU"
        # Left at 1, the one-machine GPU counter of profiles/default would run them one by one.
        assert settings.get("gpu") == 0, f"profiles/slurm: {rule} keeps the local gpu counter"


def slurm_jobs(cluster) -> list[dict]:
    """Every job slurmctld knows, as scontrol's key=value fields."""
    jobs = []
    for line in cluster.run("scontrol", "show", "job", "--oneliner").splitlines():
        if line.startswith("JobId="):
            jobs.append(dict(re.findall(r"(\w+)=(\S*)", line)))
    return jobs


def test_tiny_workflow_on_slurm_equals_local_run(cluster, tiny_workflow, tmp_path, monkeypatch):
    workdir = make_workdir(tmp_path / "wd", SLURM_CONFIG)
    planned = dry_run_jobs(workdir, *TARGETS)
    assert {"train_model", "clean_accuracy", "eap", "useful_nodes"} <= planned.keys()
    # What a user exports for profiles/slurm: this cluster's one partition, no accounts.
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    monkeypatch.setenv("CIRCUITFLOW_SLURM_PARTITION", slurm_cluster.PARTITION)
    monkeypatch.setenv("CIRCUITFLOW_SLURM_GPU_PARTITION", slurm_cluster.PARTITION)
    monkeypatch.setenv("CIRCUITFLOW_SLURM_ACCOUNT", "")
    snakemake(
        workdir, *TARGETS, "--profile", "profiles/slurm",
        # No accounting database here, so sacct cannot answer.
        "--slurm-status-command", "squeue",
        # The tiny jobs take seconds: look at them sooner than the default 40 s.
        "--slurm-init-seconds-before-status-checks", "2",
    )

    # Every planned job went through sbatch into this cluster and completed there; the jobs of
    # GPU rules were given the GPU.
    gpu_rules = gpu_rules_in_workflow()
    submitted: dict[str, int] = {}
    for job in slurm_jobs(cluster):
        assert job["JobState"] == "COMPLETED", job
        assert job["WorkDir"] == str(workdir)
        rule = re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", job["Comment"]).group(1)
        submitted[rule] = submitted.get(rule, 0) + 1
        assert (job.get("TresPerNode") == "gres:gpu:1") == (rule in gpu_rules), job
    assert submitted == planned

    # Every table equals the local run's, whose sweep summaries also have the other models.
    on_slurm = sorted(p.relative_to(workdir) for p in workdir.glob("results/**/*.parquet"))
    assert Path("results/data/sort/examples.parquet") in on_slurm
    assert Path("results/sorter/sort/clean.parquet") in on_slurm
    for path in on_slurm:
        local = pd.read_parquet(tiny_workflow / path)
        if "model" in local:
            local = local[local["model"].isin(SLURM_CONFIG["models"])].reset_index(drop=True)
        pd.testing.assert_frame_equal(pd.read_parquet(workdir / path), local, obj=str(path))
