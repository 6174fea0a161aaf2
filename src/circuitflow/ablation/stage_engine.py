"""The engine an ablation stage runs, built from its params: its model on its device, over the
selected correct examples."""

from __future__ import annotations

import logging

from circuitflow.ablation.engine import AblationEngine
from circuitflow.ablation.examples import select_examples
from circuitflow.device import resolve_device
from circuitflow.models.loader import load_model

log = logging.getLogger(__name__)


def engine_for_stage(params: dict, clean_path: str) -> AblationEngine:
    loaded = load_model(params["model"], resolve_device(params["device"]))
    settings = params["ablation"]
    examples = select_examples(clean_path, settings["n_examples"], loaded.tokenizer.pad_token_id)
    log.info("%s: %d examples", loaded.name, len(examples))
    return AblationEngine(loaded.model, loaded.tokenizer, examples, settings["batch_size"])
