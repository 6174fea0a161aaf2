"""Command line: ``python -m circuitflow STAGE name=path ... --params JSON``.

Every Snakemake rule is one such call. ``name=path`` pairs are the stage's declared inputs and
outputs (``circuitflow.stage``), passed as keyword arguments to its ``run``; a list input takes
its paths after its name, ``name=a b c``. ``--params`` is the JSON of the config keys the stage
declares (the rule's ``params``); the stage reads them through a mapping that refuses others.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from circuitflow.errors import CircuitflowError, UsageError
from circuitflow.outputs import remove_stale_temporaries
from circuitflow.registry import REGISTRY
from circuitflow.stage import Params, Stage, load

log = logging.getLogger(__name__)


def _parse_paths(arguments: list[str]) -> dict[str, list[str]]:
    """``name=path`` arguments, each bare path after one joining that name's list."""
    paths: dict[str, list[str]] = {}
    name = None
    for argument in arguments:
        key, sep, value = argument.partition("=")
        if sep and key.isidentifier():
            if not value:
                raise UsageError(f"{argument!r}: no path after '='")
            name = key
            paths.setdefault(name, []).append(value)
        elif name is not None and argument:
            paths[name].append(argument)
        else:
            raise UsageError(f"expected name=path (e.g. out=results/table.parquet), got {argument!r}")
    return paths


def _parse_params(text: str) -> dict:
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--params is not valid JSON ({e}); pass one JSON object") from e
    if not isinstance(params, dict):
        raise UsageError(f"--params must be a JSON object {{...}}, got {type(params).__name__}")
    return params


def _arguments(stage: Stage, paths: dict[str, list[str]]) -> dict[str, str | list[str]]:
    """The declared names, each once (lists for ``many`` inputs), or a UsageError."""
    names = [*stage.inputs, *stage.outputs]
    unknown = [n for n in paths if n not in names]
    missing = [n for n in names if n not in paths]
    repeated = [n for n, values in paths.items() if len(values) > 1 and n not in stage.many]
    if unknown or missing or repeated:
        problems = [f"unknown argument {n}=" for n in unknown]
        problems += [f"missing argument {n}=PATH" for n in missing]
        problems += [f"{n}= takes one path" for n in repeated]
        takes = " ".join(f"{n}=PATH" for n in names)
        raise UsageError(f"{'; '.join(problems)}; this stage takes {takes}")
    return {n: values if n in stage.many else values[0] for n, values in paths.items()}


def _package_modules() -> list[str]:
    return sorted(m for m in sys.modules if m.split(".")[0] == "circuitflow")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="circuitflow", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(REGISTRY))
    parser.add_argument("paths", nargs="*", metavar="name=path")
    parser.add_argument("--params", default="{}", help="JSON object of stage settings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        params = Params(args.stage, _parse_params(args.params))
        stage = load(args.stage)
        arguments = _arguments(stage, _parse_paths(args.paths))
        # Temporaries a killed earlier run left; Snakemake starts no job beside this one on
        # these paths, so none of them is being written now.
        remove_stale_temporaries(arguments[name] for name in stage.outputs)
        stage.run(params=params, **arguments)
    except CircuitflowError as e:
        print(f"circuitflow {args.stage}: error: {e}", file=sys.stderr)
        sys.exit(1)
    # The contract test compares these with the rule's code inputs.
    log.info("package modules run: %s", " ".join(_package_modules()))
