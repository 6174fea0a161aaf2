"""Choose the torch device from the config's ``device`` setting."""

from __future__ import annotations

import torch

from circuitflow.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': 'cuda' was asked for but no CUDA device is visible")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"config key 'device': expected auto, cpu or cuda, got {name!r}")
    return torch.device(name)
