"""Load config.yaml, validate it against the workflow's JSON schema and fill in defaults."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from circuitflow.errors import ConfigError

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
    # The failing schema's description says what the key is for; an unknown or missing key's
    # schema is its parent's, whose description would mislead.
    expected = error.schema.get("description")
    if expected and error.validator not in ("additionalProperties", "required"):
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
    _check_consistency(config)
    return config


def _check_consistency(config: dict) -> None:
    for section in ("data", "training"):
        part = config[section]
        if part["min_cols"] > part["max_cols"]:
            raise ConfigError(
                f"config key '{section}.min_cols': {part['min_cols']} is larger than "
                f"'{section}.max_cols' ({part['max_cols']})"
            )
    if config["training"]["seed"] == config["data"]["seed"]:
        raise ConfigError(
            "config key 'training.seed': must differ from 'data.seed' so the built-in model "
            "is never trained on the examples it is analysed on"
        )
    if config["training"]["d_model"] % config["training"]["n_heads"]:
        raise ConfigError("config key 'training.d_model': must be a multiple of 'training.n_heads'")


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
