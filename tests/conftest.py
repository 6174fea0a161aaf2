import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# Test models are tiny and overhead-bound: a second thread only adds synchronisation, which
# costs several-fold on a busy machine. Workflow runs in subprocesses choose their own.
torch.set_num_threads(1)

from tiny_models import ARCHITECTURES, make_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(arch, extra_tokens=0)`` -> a saved tiny model directory (cached per session)."""
    cache = {}

    def get(arch: str = "gpt2", extra_tokens: int = 0) -> Path:
        key = (arch, extra_tokens)
        if key not in cache:
            cache[key] = make_tiny_model(
                arch, tmp_path_factory.mktemp(f"{arch}_{extra_tokens}"), extra_tokens=extra_tokens
            )
        return cache[key]

    return get


__all__ = ["ARCHITECTURES"]


@pytest.fixture(autouse=True)
def close_figures():
    """Tests draw figures without saving them; pyplot keeps each until it is closed."""
    yield
    plt.close("all")


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory):
    """A work directory in which the tiny workflow has run once, end to end."""
    from workflow_run import TINY_CONFIG, make_workdir, snakemake

    workdir = make_workdir(tmp_path_factory.mktemp("workflow"), TINY_CONFIG)
    snakemake(workdir, "--cores", "2", "--resources", "gpu=1")
    return workdir
