"""Command line: ``python -m circuitflow STAGE name=path ... --params JSON``.

Every Snakemake rule is one such call. ``name=path`` pairs are the stage's inputs and outputs
(a name repeated collects a list), passed as keyword arguments to the stage's ``run_stage``; ``--params`` is the JSON of the
config sections the stage reads (the rule's ``params``), so that rerun triggers see exactly
those sections.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from circuitflow.errors import CircuitflowError

STAGES = {
    "generate-examples": "circuitflow.data.examples",
    "train-model": "circuitflow.models.training",
    "clean-accuracy": "circuitflow.clean",
    "position-ablation": "circuitflow.ablation.positions",
    "node-ablation": "circuitflow.ablation.nodes",
    "useful-nodes": "circuitflow.ablation.useful",
    "ablation-plots": "circuitflow.ablation.plots",
    "corrupt-pairs": "circuitflow.eap.pairs",
    "eap": "circuitflow.eap.attribution",
    "faithfulness": "circuitflow.eap.faithfulness",
    "eap-plots": "circuitflow.eap.plots",
    "summary": "circuitflow.summary",
}


def _parse_paths(pairs: list[str]) -> dict[str, str | list[str]]:
    """``name=path`` pairs; a name given more than once collects its paths in a list."""
    paths: dict[str, str | list[str]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise CircuitflowError(f"expected name=path, got {pair!r}")
        if name in paths:
            earlier = paths[name]
            paths[name] = [*(earlier if isinstance(earlier, list) else [earlier]), value]
        else:
            paths[name] = value
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="circuitflow", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("paths", nargs="*", metavar="name=path")
    parser.add_argument("--params", default="{}", help="JSON object of stage settings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        params = json.loads(args.params)
        stage = importlib.import_module(STAGES[args.stage])
        stage.run_stage(params=params, **_parse_paths(args.paths))
    except CircuitflowError as e:
        print(f"circuitflow {args.stage}: error: {e}", file=sys.stderr)
        sys.exit(1)
