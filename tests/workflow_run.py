"""Run the real workflow on a tiny configuration in a temporary directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_CONFIG = {
    "device": "cpu",
    "models": {"tiny": {"source": "builtin"}},
    "command_sets": ["cs1"],
    "data": {"n_examples": 24, "seed": 1, "min_cols": 2, "max_cols": 3},
    "training": {
        "seed": 5, "n_train_examples": 400, "n_eval_examples": 40, "min_cols": 2, "max_cols": 3,
        "vocab_size": 400, "n_layers": 2, "n_heads": 2, "d_model": 32, "n_ctx": 128,
        "batch_size": 16, "max_steps": 20,
    },
    "clean": {"batch_size": 8},
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
    shutil.copytree(REPO / "workflow", dest / "workflow")
    shutil.copytree(REPO / "profiles", dest / "profiles")
    (dest / "config.yaml").write_text(yaml.safe_dump(config))
    return dest
