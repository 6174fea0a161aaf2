"""Load config.yaml, validate it against the workflow's JSON schema and fill in defaults."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from circuitflow.errors import ConfigError
from circuitflow.tasks import dataset_entry, task_module, task_of

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _validator_filling_defaults(schema: dict):
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    cls = jsonschema.validators.extend(base, {"properties": properties_with_defaults})
    return cls(schema)


def _describe(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    # The failing schema's description says what the key is for. An unknown or missing key's
    # schema is its parent's, whose description would mislead, unless that schema is the `then`
    # of a condition (e.g. one model source): its description says which keys apply there.
    expected = error.schema.get("description")
    conditional = len(error.schema_path) > 1 and error.schema_path[-2] == "then"
    if expected and conditional and error.validator == "additionalProperties":
        allowed = error.schema.get("properties", {})
        unexpected = [repr(k) for k in error.instance if k not in allowed]
        one = len(unexpected) == 1
        effect = "has no effect; remove it" if one else "have no effect; remove them"
        return f"config key '{key}': {', '.join(unexpected)} {effect} [{expected}]"
    if expected and (conditional or error.validator not in ("additionalProperties", "required")):
        return f"config key '{key}': {error.message} [{expected}]"
    return f"config key '{key}': {error.message} (see workflow/schemas/config.schema.yaml)"


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Return a validated copy of ``config`` with schema defaults filled in.

    Raises ConfigError naming every bad key and what was expected.
    """
    config = copy.deepcopy(config if config is not None else {})
    validator = _validator_filling_defaults(schema or load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in errors))
    _resolve_datasets(config)
    _resolve_models(config)
    return config


def _resolve_datasets(config: dict) -> None:
    """Fill each dataset's task options and its EAP features (default: all of its task's)."""
    for name, entry in config["datasets"].items():
        features = entry.get("features")
        resolved = dataset_entry(name, {k: v for k, v in entry.items() if k != "features"})
        known = task_of(resolved).FEATURES
        if features is None:
            features = list(known)
        if not isinstance(features, list):
            raise ConfigError(
                f"config key 'datasets.{name}.features': expected a list of feature names "
                f"(of {', '.join(known) or 'none'}), got {features!r}"
            )
        unknown = [f for f in features if f not in known]
        if unknown:
            raise ConfigError(
                f"config key 'datasets.{name}.features': {', '.join(map(str, unknown))} not "
                f"features of task {resolved['task']} ({', '.join(known) or 'none'})"
            )
        config["datasets"][name] = {**resolved, "features": list(features)}


def _check_datasets(key: str, names: list[str], config: dict) -> None:
    unknown = [n for n in names if n not in config["datasets"]]
    if unknown:
        raise ConfigError(
            f"config key '{key}': no dataset {', '.join(unknown)} under 'datasets' "
            f"(has {', '.join(config['datasets'])})"
        )


def _resolve_models(config: dict) -> None:
    """A built-in model's training settings (the section, its task's defaults, its own) and the
    datasets each model is analysed on."""
    for name, entry in config["models"].items():
        key = f"models.{name}"
        if entry["source"] == "builtin":
            task = _resolve_training(config, key, entry)
            entry.setdefault("analyse_on", list(entry["train_on"]))
        _check_datasets(f"{key}.analyse_on", entry["analyse_on"], config)
        if entry["source"] == "builtin":
            # Its tokenizer is made for its task (a fixed vocabulary, or learned from its texts);
            # a task without a model of its own (your own prompts) is text you chose for it.
            datasets = {d: config["datasets"][d] for d in entry["analyse_on"]}
            foreign = [
                d for d, spec in datasets.items()
                if spec["task"] != task and task_of(spec).MODEL is not None
            ]
            if foreign:
                raise ConfigError(
                    f"config key '{key}.analyse_on': {', '.join(foreign)} not of task {task}, "
                    "which the built-in model is trained on"
                )


def _resolve_training(config: dict, key: str, entry: dict) -> str:
    """Fill a built-in model's ``training``; return the task it is trained on."""
    _check_datasets(f"{key}.train_on", entry["train_on"], config)
    tasks = {config["datasets"][d]["task"] for d in entry["train_on"]}
    if len(tasks) > 1:
        raise ConfigError(
            f"config key '{key}.train_on': datasets of one task only (one tokenizer), "
            f"got tasks {', '.join(sorted(tasks))}"
        )
    task = tasks.pop()
    defaults = task_module(task).MODEL
    if defaults is None:
        raise ConfigError(
            f"config key '{key}.train_on': task {task} has no built-in model; analyse it with "
            "a local or hub model"
        )
    training = {**config["training"], **defaults, **entry.get("training", {})}
    if training["d_model"] % training["n_heads"]:
        raise ConfigError(
            f"config key '{key}.training.d_model': {training['d_model']} is not a "
            f"multiple of n_heads ({training['n_heads']})"
        )
    if training["seed"] == config["data"]["seed"]:
        raise ConfigError(
            f"config key '{key}.training.seed': must differ from 'data.seed' so the "
            "built-in model is never trained on the examples it is analysed on"
        )
    entry["training"] = training
    return task


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    return validate_config(raw)
