"""An edit to one setting or to one stage's source module reruns that stage and what depends on
it, and nothing else.

Each case edits a copy of the finished tiny run and compares the jobs a dry run then plans with the
jobs of `--forcerun` on the rules that read the edited setting or module: the same jobs means
those rules and everything downstream of them, nothing upstream and no sibling.
"""

import csv
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

import circuitflow
from workflow_run import dry_run_jobs, snakemake

pytestmark = pytest.mark.slow

CONFIG_EDITS = [
    # (config key, new value, rules whose params carry it, rules that must not rerun)
    ("clean.batch_size", 3, {"clean_accuracy"}, {"generate_examples", "train_model"}),
    ("data.n_examples", 30, {"generate_examples"}, {"train_model"}),
    ("plots.dpi", 72, {"eap_plots", "ablation_plots", "summary", "weight_circuits",
                       "logit_attribution", "pair_logit_attribution", "node_pca", "greedy_pruning"},
     {"train_model", "eap", "node_ablation"}),
    ("eap.top_n", 3, {"eap"},
     {"train_model", "clean_accuracy", "node_ablation", "position_ablation"}),
    ("ablation.useful_threshold", 50, {"useful_nodes"},
     {"node_ablation", "position_ablation", "eap"}),
]

SOURCE_EDITS = [
    # (module under src/circuitflow, the jobs that run it: rules, or outputs of single jobs)
    # The built-in model's held-out accuracy and the pairs' correctness check run clean.py.
    ("clean.py", ["clean_accuracy", "corrupt_pairs", "train_model"]),
    ("models/training.py", ["train_model"]),
    ("eap/plots.py", ["eap_plots"]),
    # Imported through other modules only: by the loader, the ablation engine, the pairs.
    ("device.py", ["train_model", "clean_accuracy", "position_ablation", "node_ablation",
                   "corrupt_pairs", "eap", "faithfulness"]),
    # A task runs only in the jobs of its datasets.
    ("tasks/sorting.py", ["results/data/sort/examples.parquet", "results/models/sorter",
                          "results/sorter/sort/eap/INPUT_VALUE/pairs.parquet"]),
]


@pytest.fixture(scope="module")
def finished_run(tiny_workflow, tmp_path_factory):
    copy = tmp_path_factory.mktemp("incremental") / "run"
    # copytree copies with copy2: file times and the .snakemake metadata come along.
    shutil.copytree(tiny_workflow, copy)
    assert dry_run_jobs(copy) == {}, "a copy of a finished run should have nothing to do"
    return copy


def summary(workdir: Path, *args: str) -> list[dict]:
    """`--dry-run --summary`: one row per output with its rule, status and plan."""
    out = snakemake(workdir, *args, "--dry-run", "--summary").stdout
    return list(csv.DictReader(out[out.index("output_file\t"):].splitlines(), delimiter="\t"))


@pytest.mark.parametrize("key,value,readers,kept", CONFIG_EDITS)
def test_config_edit_reruns_only_the_stages_that_read_it(finished_run, key, value, readers, kept):
    expected = dry_run_jobs(finished_run, "--forcerun", *readers)
    assert readers <= expected.keys() and not kept & expected.keys()

    section, name = key.split(".")
    original = edited_config(finished_run, lambda c: c.setdefault(section, {}).update({name: value}))
    config_file = finished_run / "config.yaml"
    try:
        planned = dry_run_jobs(finished_run)
        changed = {
            row["rule"] for row in summary(finished_run) if row["status"] == "params changed"
        }
    finally:
        config_file.write_text(original)
    assert changed == readers
    assert planned == expected


def edited_config(workdir: Path, edit) -> str:
    """Apply ``edit`` to the work directory's config; return the original text."""
    config_file = workdir / "config.yaml"
    original = config_file.read_text()
    config = yaml.safe_load(original)
    edit(config)
    config_file.write_text(yaml.safe_dump(config))
    return original


def test_ig_steps_under_plain_eap_reruns_nothing(finished_run):
    original = edited_config(finished_run, lambda c: c["eap"].update(ig_steps=9))
    try:
        assert dry_run_jobs(finished_run) == {}
    finally:
        (finished_run / "config.yaml").write_text(original)


def test_removing_a_feature_reruns_only_the_summary_and_the_figures_index(finished_run):
    features = lambda c: c["datasets"]["cs1"]["features"]  # noqa: E731
    original = edited_config(finished_run, lambda c: features(c).remove("DEFFIELDNAME"))
    try:
        assert dry_run_jobs(finished_run) == {"summary": 1, "interactive_figures": 1}
    finally:
        (finished_run / "config.yaml").write_text(original)


def test_adding_a_feature_runs_only_its_jobs_the_summary_and_the_figures_index(finished_run):
    original = edited_config(
        finished_run, lambda c: c["datasets"]["cs1"]["features"].append("ENGFIELDNAME")
    )
    try:
        planned = dry_run_jobs(finished_run)
    finally:
        (finished_run / "config.yaml").write_text(original)
    assert planned == {"corrupt_pairs": 1, "eap": 1, "faithfulness": 1, "eap_plots": 1,
                       "pair_logit_attribution": 1, "summary": 1, "interactive_figures": 1}


@pytest.mark.parametrize("module,readers", SOURCE_EDITS)
def test_source_edit_reruns_only_the_stages_that_run_it(finished_run, module, readers):
    expected = dry_run_jobs(finished_run, "--forcerun", *readers)
    assert len(expected) >= len([r for r in readers if "/" not in r])

    # The edit is simulated by a newer modification time (the repository's files keep their
    # content). Snakemake 9 ignores a newer input whose checksum matches the one it recorded,
    # so checksums are switched off: the newer time then stands for a changed file. The time is
    # now, not later: a future one fails the clock-skew check of any job that finishes meanwhile.
    no_checksums = ("--max-checksum-file-size", "0")
    path = Path(circuitflow.__file__).parent / module
    before = path.stat()
    os.utime(path, ns=(before.st_atime_ns, time.time_ns()))
    try:
        planned = dry_run_jobs(finished_run, *no_checksums)
        changed = {
            row["rule"] for row in summary(finished_run, *no_checksums)
            if row["status"] == "updated input files"
        }
    finally:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    # --summary names the first reason a job reruns: a reader downstream of another reader
    # shows the upstream one's update instead.
    rules = {r for r in readers if "/" not in r} or {"generate_examples", "train_model",
                                                       "corrupt_pairs"}
    assert changed and changed <= rules
    assert planned == expected
