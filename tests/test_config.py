"""The config schema: defaults filled in, and errors that name the bad key and the expectation."""

import copy

import pytest
import yaml

from circuitflow.config import load_config, load_schema, validate_config
from circuitflow.errors import ConfigError
from circuitflow.tasks import arithmetic, dataset_entry, sorting, tinysql
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
    config = validate_config({
        "datasets": {"cs2": {"task": "tinysql", "command_set": "cs2"}},
        "models": {"m": {"source": "builtin", "train_on": ["cs2"]}},
    })
    assert config["ablation"]["method"] == "mean"
    assert config["device"] == "auto"
    assert config["datasets"]["cs2"]["features"] == [
        "ENGTABLENAME", "ENGFIELDNAME", "DEFTABLENAME", "DEFFIELDNAME"
    ]


@pytest.mark.parametrize(
    "changes, key, expectation",
    [
        ({"ablation__method": "avg"}, "ablation.method", "'mean', 'zero', 'resample'"),
        ({"data__n_examples": 0}, "data.n_examples", "less than the minimum of 1"),
        ({"datasets__cs1__command_set": "cs9"}, "datasets.cs1.command_set", "'cs1', 'cs2', 'cs3'"),
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
        validate_config(broken(models={"data": {"source": "builtin", "train_on": ["cs1"]}}))


def test_inconsistent_values_are_rejected():
    with pytest.raises(ConfigError, match="'models.tinysql.training.seed': must differ"):
        validate_config(broken(training__seed=DEFAULT["data"]["seed"]))
    with pytest.raises(ConfigError, match="'models.tinysql.training.seed': must differ"):
        validate_config(broken(models__tinysql__training={"seed": DEFAULT["data"]["seed"]}))
    with pytest.raises(ConfigError, match="'models.tinysql.training.d_model': 30 is not a mult"):
        validate_config(broken(models__tinysql__training={"d_model": 30, "n_heads": 4}))


@pytest.mark.parametrize("entry, message", [
    ({"task": "tinysql", "min_cols": 5, "max_cols": 3}, r"'datasets.d.min_cols': 5 is larger"),
    ({"task": "tinysql", "classes": "order_direction"}, r"'datasets.d.classes': order_direction needs"),
    ({"task": "sorting", "length": 5, "class_output": 9}, r"'datasets.d.class_output': must be"),
    ({"task": "arithmetic", "n_digits": 2, "class_digit": 3}, r"'datasets.d.class_digit': must be"),
    ({"task": "prompts"}, r"'datasets.d.path': missing"),
])
def test_inconsistent_dataset_options_are_rejected_when_the_config_loads(entry, message):
    with pytest.raises(ConfigError, match=message):
        dataset_entry("d", entry)


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
        ({"source": "builtin", "train_on": ["cs1"], "path": "models/mine"}, "'path' has no effect",
         "builtin"),
        ({"source": "builtin", "train_on": ["cs1"], "id": "org/model"}, "'id' has no effect",
         "builtin"),
        ({"source": "hub", "id": "org/model", "analyse_on": ["cs1"], "path": "models/m"},
         "'path' has no effect", "hub"),
        ({"source": "hub", "id": "org/model", "analyse_on": ["cs1"], "train_on": ["cs1"]},
         "'train_on' has no effect", "hub"),
        ({"source": "local", "path": "models/mine", "analyse_on": ["cs1"], "revision": "v1"},
         "'revision' has no effect", "local"),
        ({"source": "local", "path": "models/mine", "analyse_on": ["cs1"], "id": "org/model"},
         "'id' has no effect", "local"),
        ({"source": "local", "path": "m", "analyse_on": ["cs1"], "training": {"max_steps": 5}},
         "'training' has no effect", "local"),
        ({"source": "local", "path": "m", "analyse_on": ["cs1"], "id": "o/m", "revision": "v1"},
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
        {"source": "builtin", "train_on": ["cs1"]},
        {"source": "builtin", "train_on": ["cs1"], "analyse_on": ["cs2"],
         "training": {"max_steps": 5}},
        {"source": "local", "path": "models/mine", "analyse_on": ["cs1"]},
        {"source": "hub", "id": "org/model", "analyse_on": ["cs1"]},
        {"source": "hub", "id": "org/model", "revision": "v1", "analyse_on": ["cs1", "sort"]},
    ],
)
def test_keys_each_source_reads_are_accepted(entry):
    model = validate_config(broken(models={"tiny": entry}))["models"]["tiny"]
    assert {key: model[key] for key in entry if key != "training"} == {
        key: value for key, value in entry.items() if key != "training"
    }
    for key, value in entry.get("training", {}).items():
        assert model["training"][key] == value


def test_model_entry_without_source_is_one_error():
    with pytest.raises(ConfigError) as err:
        validate_config(broken(models={"tiny": {"path": "models/mine"}}))
    errors = str(err.value).splitlines()[1:]
    assert len(errors) == 1 and "'source' is a required property" in errors[0]


# --- datasets and models ----------------------------------------------------------------------


def config_with(datasets, models):
    return validate_config({"datasets": datasets, "models": models})


def builtin(*train_on, **keys):
    return {"source": "builtin", "train_on": list(train_on), **keys}


@pytest.mark.parametrize(
    "task, given",
    [(tinysql, {"command_set": "cs3", "max_cols": 6}), (sorting, {"length": 12}),
     (arithmetic, {"n_digits": 4, "class_digit": 1})],
)
def test_dataset_options_are_filled_from_the_task(task, given):
    name = task.__name__.split(".")[-1]
    config = config_with({"d": {"task": name, **given}}, {"m": builtin("d")})
    resolved = config["datasets"]["d"]
    options = {key: value for key, value in resolved.items() if key not in ("task", "features")}
    assert resolved["task"] == name
    assert options == {key: given.get(key, spec["default"]) for key, spec in task.OPTIONS.items()}
    assert resolved["features"] == list(task.FEATURES)


def test_features_may_be_chosen_or_none():
    config = config_with(
        {"a": {"task": "tinysql", "features": ["DEFFIELDNAME"]},
         "b": {"task": "tinysql", "features": []}},
        {"m": builtin("a", "b")},
    )
    assert config["datasets"]["a"]["features"] == ["DEFFIELDNAME"]
    assert config["datasets"]["b"]["features"] == []


@pytest.mark.parametrize(
    "dataset, key, expectation",
    [
        ({"task": "tinysql", "colour": 3}, "datasets.d.colour", "task tinysql has no such option"),
        ({"task": "tinysql", "max_cols": 20}, "datasets.d.max_cols",
         "20 is greater than the maximum"),
        ({"task": "sorting", "length": "ten"}, "datasets.d.length",
         "'ten' is not of type 'integer'"),
        ({"task": "chess"}, "datasets.d.task", "unknown task 'chess'"),
        ({"task": "tinysql", "features": ["ENGTABLENAME", "COLOUR"]}, "datasets.d.features",
         "COLOUR not features of task tinysql (ENGTABLENAME, ENGFIELDNAME"),
        ({"task": "tinysql", "features": "ENGTABLENAME"}, "datasets.d.features",
         "expected a list of feature names"),
    ],
)
def test_bad_datasets_are_named_by_key(dataset, key, expectation):
    with pytest.raises(ConfigError) as err:
        config_with({"d": dataset}, {"m": {"source": "hub", "id": "org/m", "analyse_on": ["d"]}})
    assert f"config key '{key}'" in str(err.value)
    assert expectation in str(err.value)


def test_unknown_option_lists_the_options_of_its_task():
    with pytest.raises(ConfigError) as err:
        config_with({"d": {"task": "sorting", "colour": 3}}, {"m": builtin("d")})
    assert "(its options: " + ", ".join(sorted(sorting.OPTIONS)) + ")" in str(err.value)


@pytest.mark.parametrize(
    "model, key",
    [
        (builtin("cs1", "cs4"), "models.m.train_on"),
        (builtin("cs1", analyse_on=["cs1", "cs4"]), "models.m.analyse_on"),
        ({"source": "local", "path": "x", "analyse_on": ["cs4"]}, "models.m.analyse_on"),
        ({"source": "hub", "id": "org/m", "analyse_on": ["cs4"]}, "models.m.analyse_on"),
    ],
)
def test_a_model_naming_a_missing_dataset(model, key):
    with pytest.raises(ConfigError) as err:
        config_with({"cs1": {"task": "tinysql"}, "sort": {"task": "sorting"}}, {"m": model})
    assert str(err.value) == f"config key '{key}': no dataset cs4 under 'datasets' (has cs1, sort)"


def test_a_builtin_model_trains_on_datasets_of_one_task():
    datasets = {"cs1": {"task": "tinysql"}, "sort": {"task": "sorting"}}
    with pytest.raises(ConfigError, match=r"'models.m.train_on': datasets of one task only.*"
                                          r"got tasks sorting, tinysql"):
        config_with(datasets, {"m": builtin("cs1", "sort")})


def test_a_builtin_model_is_analysed_on_its_task_or_your_own_prompts():
    datasets = {"cs1": {"task": "tinysql"}, "sort": {"task": "sorting"},
                "own": {"task": "prompts", "path": "own.jsonl"}}
    with pytest.raises(ConfigError, match=r"'models.m.analyse_on': cs1 not of task sorting"):
        config_with(datasets, {"m": builtin("sort", analyse_on=["sort", "cs1"])})
    model = config_with(datasets, {"m": builtin("sort", analyse_on=["sort", "own"])})["models"]["m"]
    assert model["analyse_on"] == ["sort", "own"]


def test_a_builtin_model_cannot_train_on_your_own_prompts():
    with pytest.raises(ConfigError, match=r"'models.m.train_on': task prompts has no built-in"):
        config_with({"own": {"task": "prompts", "path": "own.jsonl"}}, {"m": builtin("own")})


def test_training_settings_merge_section_then_task_then_model():
    section_defaults = load_schema()["properties"]["training"]["properties"]
    config = validate_config({
        "datasets": {"sort": {"task": "sorting"}},
        "models": {
            "own": builtin("sort", training={"d_model": 128, "max_steps": 40}),
            "plain": builtin("sort"),
        },
        "training": {"n_layers": 5, "d_model": 32, "batch_size": 7, "attn_only": False},
    })
    own, plain = (config["models"][m]["training"] for m in ("own", "plain"))
    assert sorting.MODEL["n_layers"] == 1 and sorting.MODEL["attn_only"] is True
    assert own["n_layers"] == plain["n_layers"] == 1  # the task's over the section's 5
    assert own["attn_only"] is plain["attn_only"] is True  # the task's over the section's False
    assert own["d_model"] == 128 and plain["d_model"] == sorting.MODEL["d_model"]  # model, task
    assert own["max_steps"] == 40 and plain["max_steps"] == sorting.MODEL["max_steps"]
    assert own["batch_size"] == plain["batch_size"] == 7  # the section's, which the task leaves
    assert own["learning_rate"] == section_defaults["learning_rate"]["default"]  # nobody's: schema
    assert set(own) == set(section_defaults)


def test_analyse_on_defaults_to_train_on():
    datasets = {"cs1": {"task": "tinysql"}, "cs2": {"task": "tinysql", "command_set": "cs2"}}
    models = config_with(datasets, {
        "both": builtin("cs1", "cs2"), "one": builtin("cs1", "cs2", analyse_on=["cs2"]),
    })["models"]
    assert models["both"]["analyse_on"] == ["cs1", "cs2"]
    assert models["one"]["analyse_on"] == ["cs2"]


@pytest.mark.parametrize(
    "model", [{"source": "local", "path": "models/mine"}, {"source": "hub", "id": "org/m"}],
)
def test_local_and_hub_models_need_analyse_on(model):
    with pytest.raises(ConfigError) as err:
        config_with({"cs1": {"task": "tinysql"}}, {"m": model})
    errors = str(err.value).splitlines()[1:]
    assert len(errors) == 1 and errors[0].strip().startswith(
        "config key 'models.m': 'analyse_on' is a required property"
    )
