"""Run the real workflow on a tiny configuration in a temporary directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_CONFIG = {
    "device": "cpu",
    "datasets": {
        "cs1": {"task": "tinysql", "command_set": "cs1", "min_cols": 2, "max_cols": 3,
                "features": ["ENGTABLENAME", "DEFFIELDNAME"]},
        "sort": {"task": "sorting", "length": 5, "max_value": 9, "class_output": 3},
        # Trained on uniform questions (carries everywhere), analysed on class-balanced ones.
        "add_train": {"task": "arithmetic", "n_digits": 2, "operations": ["add"],
                      "class_digit": 1, "balanced": False, "features": []},
        "add": {"task": "arithmetic", "n_digits": 2, "operations": ["add"], "class_digit": 1,
                "features": ["X_DIGIT"]},
    },
    # About a minute of training each on two cores: most examples right, so that every later
    # stage has correct examples to work on.
    "models": {
        "tiny": {"source": "builtin", "train_on": ["cs1"], "training": {
            "n_train_examples": 4000, "n_eval_examples": 100, "n_layers": 2, "batch_size": 32,
            "warmup_steps": 50, "max_steps": 1400, "eval_every": 200, "early_stop_accuracy": 0.9,
        }},
        "sorter": {"source": "builtin", "train_on": ["sort"], "training": {
            "n_train_examples": 4000, "n_eval_examples": 100, "batch_size": 32,
            "warmup_steps": 50, "max_steps": 1500, "eval_every": 250, "early_stop_accuracy": 0.9,
        }},
        "adder": {"source": "builtin", "train_on": ["add_train"], "analyse_on": ["add"],
                  "training": {
            "n_train_examples": 3000, "n_eval_examples": 100, "batch_size": 32, "n_layers": 2,
            "d_model": 64, "warmup_steps": 50, "max_steps": 1500, "eval_every": 250,
            "early_stop_accuracy": 0.9,
        }},
    },
    "data": {"n_examples": 24, "seed": 1},
    "training": {"seed": 5},
    "clean": {"batch_size": 8},
    "ablation": {"n_examples": 6},
    "eap": {"batch_size": 4, "n_batches": 2, "top_n": 5},
    "faithfulness": {"circuit_sizes": [0, 5, 20, 10000]},
    # Small figures: drawing them is most of what the plotting jobs cost.
    "weight_circuits": {"max_tokens": 32, "max_positions": 32},
    "plots": {"dpi": 60},
}


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Call snakemake as a user would, with this interpreter's environment on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
        capture_output=True, text=True,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def make_workdir(dest: Path, config: dict) -> Path:
    """A copy of the workflow (not the package) with ``config`` as its config.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", dest)
    shutil.copy(REPO / "environment.yml", dest)  # the rules' conda environment
    shutil.copytree(REPO / "workflow", dest / "workflow")
    shutil.copytree(REPO / "profiles", dest / "profiles")
    (dest / "config.yaml").write_text(yaml.safe_dump(config))
    return dest


def dry_run_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> number of jobs that a run would execute now, from a dry run's job table.

    The target rule ``all`` is left out: it only collects files and runs no command.
    """
    result = snakemake(workdir, *args, "--dry-run", "--quiet", "rules")
    out = result.stdout + result.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].split("\ntotal", 1)[0]
    jobs = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}
    jobs.pop("all", None)
    return jobs
