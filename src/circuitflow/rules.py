"""What the Snakemake rules derive from the stage declarations: each job's params, each rule's
code inputs and each model's defining files.

Snakemake reruns a job when its params, its input files or its rule's code change. Params are
exactly the config keys the stage declares for that job; code inputs are the package modules
the stage imports, followed transitively through the package; a model's inputs are the files in
its directory, so weights replaced in place rerun everything that used them.
"""

from __future__ import annotations

import ast
import json
from functools import cache
from pathlib import Path

from circuitflow.registry import REGISTRY
from circuitflow.stage import Only, Stage

PACKAGE = "circuitflow"
PACKAGE_DIR = Path(__file__).resolve().parent
BUILTIN_MODELS_DIR = "results/models"
# The command line that runs every stage, and what it imports to do so.
ENTRY_MODULES = ("circuitflow.__main__", "circuitflow.cli")
REGISTRY_MODULE = "circuitflow.registry"  # see its docstring


# --- declarations ---------------------------------------------------------------------------------

def _literal(node: ast.expr):
    """A declaration argument: literals, tuples of them, and ``Only(...)``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Only":
        return Only(*map(_literal, node.args), **{k.arg: _literal(k.value) for k in node.keywords})
    if isinstance(node, ast.Tuple):
        return tuple(map(_literal, node.elts))
    return ast.literal_eval(node)


@cache
def stage(name: str) -> Stage:
    """Stage ``name``'s declaration, read from its module's source without importing it (``run``
    is None): the workflow reads every declaration each time it builds the DAG, and importing
    the stages (torch, transformers, plotly) took longer than the rest of a dry run."""
    path = _module_file(REGISTRY[name])
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "STAGE" for t in node.targets
        ):
            call = node.value
            args = [None if i == 1 else _literal(a) for i, a in enumerate(call.args)]
            return Stage(*args, **{k.arg: _literal(k.value) for k in call.keywords})
    raise RuntimeError(f"{path}: no `STAGE = Stage(...)` at the top level")


# --- params -----------------------------------------------------------------------------------

MODEL_KEYS = ("source", "path", "id", "revision")


def model_spec(config: dict, name: str) -> dict:
    """Where a model comes from, with its name; a built-in model's path is the directory it is
    trained to. How it is trained is its recipe's, read by the training stage alone."""
    entry = config["models"][name]
    spec = {key: entry[key] for key in MODEL_KEYS if key in entry}
    if spec["source"] == "builtin":
        spec["path"] = f"{BUILTIN_MODELS_DIR}/{name}"
    return {**spec, "name": name}


def _task_options(config: dict, name: str) -> dict:
    """A dataset's task and options: its EAP features are each a job's own, changing no data."""
    return {k: v for k, v in config["datasets"][name].items() if k != "features"}


def dataset_spec(config: dict, name: str) -> dict:
    return {**_task_options(config, name), "name": name}


def model_recipe(config: dict, name: str) -> dict:
    """What a built-in model is trained from: its merged training settings and its datasets."""
    entry = config["models"][name]
    return {
        "training": entry["training"],
        "datasets": {d: _task_options(config, d) for d in entry["train_on"]},
    }


def _lookup(config: dict, key: str):
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def _put(params: dict, key: str, value) -> None:
    *sections, last = key.split(".")
    for part in sections:
        params = params.setdefault(part, {})
    params[last] = value


def job_params(name: str, config: dict, wildcards: dict, **job) -> dict:
    """The params of one job of stage ``name``: its declared config keys (conditional ones only
    where their condition holds), its model entry, and the job values it declares."""
    declared = stage(name)
    params: dict = {}
    for key in declared.reads:
        if isinstance(key, Only):
            condition, wanted = key.when
            if _lookup(config, condition) != wanted:
                continue
            key = key.key
        if key == "model":
            params["model"] = model_spec(config, wildcards["model"])
        elif key == "dataset":
            params["dataset"] = dataset_spec(config, wildcards["dataset"])
        elif key == "recipe":
            params["recipe"] = model_recipe(config, wildcards["model"])
        else:
            _put(params, key, _lookup(config, key))
    for key in declared.job:
        params[key] = job[key] if key in job else wildcards[key]
    return params


def params_json(name: str, config: dict, wildcards: dict, **job) -> str:
    # sort_keys: the same settings always give the same text, so Snakemake sees no change.
    return json.dumps(job_params(name, config, wildcards, **job), sort_keys=True)


# --- code inputs --------------------------------------------------------------------------------

def _module_file(module: str) -> Path | None:
    """The source file of a package module or package, None for anything outside the package."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(module: str) -> set[str]:
    """Package modules ``module`` imports anywhere in its source (also inside functions)."""
    path = _module_file(module)
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            found.add(base)
            # ``from package import module`` imports that module too.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if _module_file(m) is not None}


def _with_parents(module: str) -> set[str]:
    """A module and the packages above it, whose ``__init__`` runs when it is imported."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


@cache
def module_closure(*modules: str) -> frozenset[str]:
    """Every package module that importing ``modules`` can run."""
    todo = set().union(*map(_with_parents, modules))
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        seen.add(module)
        for imported in _imported_modules(module):
            todo |= _with_parents(imported) - seen
    return frozenset(seen)


def code_inputs(name: str, tasks: tuple[str, ...] = ()) -> list[str]:
    """The source files a job of stage ``name`` runs, sorted: editing one reruns it. A stage
    imports the task of its dataset by name, so a job's ``tasks`` are followed too."""
    modules = module_closure(*ENTRY_MODULES, REGISTRY[name], *(f"{PACKAGE}.tasks.{t}" for t in tasks))
    return sorted(str(_module_file(m)) for m in modules - {REGISTRY_MODULE})


def job_tasks(name: str, config: dict, wildcards: dict) -> tuple[str, ...]:
    """The tasks a job of stage ``name`` works with: its dataset's, or its model's datasets'."""
    reads = stage(name).reads
    if "dataset" in reads:
        return (config["datasets"][wildcards["dataset"]]["task"],)
    if "recipe" in reads:
        train_on = config["models"][wildcards["model"]]["train_on"]
        return tuple(sorted({config["datasets"][d]["task"] for d in train_on}))
    return ()


# --- models ---------------------------------------------------------------------------------

def model_files(spec: dict) -> list[str]:
    """The files that define a model, as inputs: a built-in model's directory (made by the
    training rule), every file of a local model's directory (a replaced weights file then
    reruns its jobs; a missing directory stays the one input, so Snakemake stops before any job
    and names it), nothing for a hub model (its revision is in the params)."""
    if spec["source"] == "builtin":
        return [spec["path"]]
    if spec["source"] == "local":
        directory = Path(spec["path"])
        if not directory.is_dir():
            return [spec["path"]]
        return sorted(
            str(p) for p in directory.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
        )
    return []


def dataset_files(spec: dict) -> list[str]:
    """The files a dataset is read from (a table of your own prompts), as inputs."""
    return [spec["path"]] if "path" in spec else []
