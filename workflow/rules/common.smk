import json
import re
import shlex
from pathlib import Path

import circuitflow
from circuitflow.config import load_schema, validate_config

configfile: "config.yaml"

report: "../report/workflow.rst"

# Validate before any job: a bad value stops the run with the key that is wrong.
config.update(validate_config(config, load_schema(workflow.source_path("../schemas/config.schema.yaml"))))

MODELS = list(config["models"])
BUILTIN_MODELS = [m for m, spec in config["models"].items() if spec["source"] == "builtin"]
COMMAND_SETS = config["command_sets"]
PACKAGE_DIR = Path(circuitflow.__file__).parent
# One environment for every rule, the one the README installs (used with --use-conda).
CONDA_ENV = "../../environment.yml"


def _alternatives(names):
    return "|".join(map(re.escape, names)) if names else "(?!x)x"


wildcard_constraints:
    model=_alternatives(MODELS),
    builtin_model=_alternatives(BUILTIN_MODELS),
    command_set="cs[0-9]+",


def sources(*modules):
    """The package files a stage runs, as inputs: editing one reruns that stage."""
    return [str(PACKAGE_DIR / m) for m in modules]


def repeated_arg(name, paths):
    """``name=path`` once per path: the stage receives them as one list, in order."""
    return " ".join(f"{name}={shlex.quote(str(p))}" for p in paths)


def stage_params(**sections):
    """JSON of exactly the settings a stage reads, so rerun triggers see only those."""
    return json.dumps(sections, sort_keys=True)


def model_spec(name):
    spec = dict(config["models"][name])
    if spec["source"] == "builtin":
        spec["path"] = f"results/models/{name}"
    return spec


def model_input(wildcards):
    """A built-in model is made by train_model; a local one must exist before the run starts."""
    spec = model_spec(wildcards.model)
    return [] if spec["source"] == "hub" else [spec["path"]]


def pair_settings():
    """The eap keys that choose the corrupt pairs: method, ig_steps and top_n leave them alone."""
    keys = ("seed", "batch_size", "n_batches", "num_fields", "use_novel_names",
            "use_synonyms_table", "use_synonyms_field")
    return {k: config["eap"][k] for k in keys}
