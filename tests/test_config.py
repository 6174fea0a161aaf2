"""The config schema: defaults filled in, and errors that name the bad key and the expectation."""

import copy

import pytest
import yaml

from circuitflow.config import load_config, validate_config
from circuitflow.errors import ConfigError
from workflow_run import REPO

DEFAULT = yaml.safe_load((REPO / "config.yaml").read_text())


def broken(**changes):
    config = copy.deepcopy(DEFAULT)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = config
        for p in parents:
            node = node[p]
        node[key] = value
    return config


def test_default_config_is_valid():
    assert validate_config(DEFAULT)["models"]["tinysql"]["source"] == "builtin"


def test_missing_sections_get_schema_defaults():
    config = validate_config({"models": {"m": {"source": "builtin"}}, "command_sets": ["cs2"]})
    assert config["ablation"]["method"] == "mean"
    assert config["device"] == "auto"
    assert config["eap"]["features"] == ["ENGTABLENAME", "ENGFIELDNAME", "DEFTABLENAME", "DEFFIELDNAME"]


@pytest.mark.parametrize(
    "changes, key, expectation",
    [
        ({"ablation__method": "avg"}, "ablation.method", "'mean', 'zero', 'resample'"),
        ({"data__n_examples": 0}, "data.n_examples", "less than the minimum of 1"),
        ({"command_sets": ["cs9"]}, "command_sets.0", "'cs1', 'cs2', 'cs3'"),
        ({"eap__method": "magic"}, "eap.method", "'eap', 'eap-ig'"),
        ({"data__seed": "one"}, "data.seed", "not of type 'integer'"),
        ({"device": "tpu"}, "device", "'auto', 'cpu', 'cuda'"),
        ({"models": {"m": {"source": "local"}}}, "models.m", "'path' is a required property"),
        ({"models": {"m": {"source": "hub"}}}, "models.m", "'id' is a required property"),
        ({"data__colour": 3}, "data", "'colour' was unexpected"),
    ],
)
def test_bad_values_name_key_and_expectation(changes, key, expectation):
    with pytest.raises(ConfigError) as err:
        validate_config(broken(**changes))
    assert f"config key '{key}'" in str(err.value)
    assert expectation in str(err.value)


def test_model_name_may_not_shadow_a_results_folder():
    with pytest.raises(ConfigError, match="config key 'models'"):
        validate_config(broken(models={"data": {"source": "builtin"}}))


def test_inconsistent_values_are_rejected():
    with pytest.raises(ConfigError, match="'data.min_cols'.*larger"):
        validate_config(broken(data__min_cols=5, data__max_cols=3))
    with pytest.raises(ConfigError, match="'training.seed': must differ"):
        validate_config(broken(training__seed=DEFAULT["data"]["seed"]))


def test_load_config_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    "entry, unexpected, source",
    [
        ({"source": "builtin", "path": "models/mine"}, "'path' has no effect", "builtin"),
        ({"source": "builtin", "id": "org/model"}, "'id' has no effect", "builtin"),
        ({"source": "hub", "id": "org/model", "path": "models/m"}, "'path' has no effect", "hub"),
        ({"source": "local", "path": "models/mine", "revision": "v1"}, "'revision' has no effect",
         "local"),
        ({"source": "local", "path": "models/mine", "id": "org/model"}, "'id' has no effect",
         "local"),
        ({"source": "local", "path": "m", "id": "o/m", "revision": "v1"},
         "'id', 'revision' have no effect; remove them", "local"),
    ],
)
def test_keys_without_effect_for_the_source(entry, unexpected, source):
    with pytest.raises(ConfigError) as err:
        validate_config(broken(models={"tiny": entry}))
    errors = str(err.value).splitlines()[1:]
    assert len(errors) == 1, errors  # one line per error, and this is the only one
    assert errors[0].strip().startswith(f"config key 'models.tiny': {unexpected}")
    assert "remove" in errors[0] and f"source {source} takes" in errors[0]


@pytest.mark.parametrize(
    "entry",
    [
        {"source": "builtin"},
        {"source": "local", "path": "models/mine"},
        {"source": "hub", "id": "org/model"},
        {"source": "hub", "id": "org/model", "revision": "v1"},
    ],
)
def test_keys_each_source_reads_are_accepted(entry):
    assert validate_config(broken(models={"tiny": entry}))["models"]["tiny"] == entry


def test_model_entry_without_source_is_one_error():
    with pytest.raises(ConfigError) as err:
        validate_config(broken(models={"tiny": {"path": "models/mine"}}))
    errors = str(err.value).splitlines()[1:]
    assert len(errors) == 1 and "'source' is a required property" in errors[0]
