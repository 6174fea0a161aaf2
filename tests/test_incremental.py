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
    ("plots.dpi", 72, {"eap_plots", "ablation_plots", "summary"},
     {"train_model", "eap", "node_ablation"}),
    ("eap.top_n", 3, {"eap"},
     {"train_model", "clean_accuracy", "node_ablation", "position_ablation"}),
    ("ablation.useful_threshold", 50, {"useful_nodes"},
     {"node_ablation", "position_ablation", "eap"}),
]

SOURCE_EDITS = [
    # (module under src/circuitflow, rules that declare it as an input)
    # The built-in model's held-out accuracy is computed by clean.py too.
    ("clean.py", {"clean_accuracy", "corrupt_pairs", "train_model"}),
    ("models/training.py", {"train_model"}),
    ("eap/plots.py", {"eap_plots"}),
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

    config_file = finished_run / "config.yaml"
    original = config_file.read_text()
    config = yaml.safe_load(original)
    section, name = key.split(".")
    config.setdefault(section, {})[name] = value
    config_file.write_text(yaml.safe_dump(config))
    try:
        planned = dry_run_jobs(finished_run)
        changed = {
            row["rule"] for row in summary(finished_run) if row["status"] == "params changed"
        }
    finally:
        config_file.write_text(original)
    assert changed == readers
    assert planned == expected


@pytest.mark.parametrize("module,readers", SOURCE_EDITS)
def test_source_edit_reruns_only_the_stages_that_run_it(finished_run, module, readers):
    expected = dry_run_jobs(finished_run, "--forcerun", *readers)
    assert readers <= expected.keys()

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
    assert changed and changed <= readers
    assert planned == expected
