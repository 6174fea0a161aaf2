import re
import sys

from circuitflow.config import load_schema, validate_config
from circuitflow.tasks import task_of
from circuitflow.rules import (
    code_inputs, dataset_files, dataset_spec, job_tasks, model_files, model_spec, params_json,
    stage,
)

# A config given with --configfile replaces config.yaml instead of extending it: merged into it,
# a shipped config's datasets and models would run beside the default ones.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "../report/workflow.rst"

# Validate before any job: a bad value stops the run with the key that is wrong.
config.update(validate_config(config, load_schema(workflow.source_path("../schemas/config.schema.yaml"))))

MODELS = list(config["models"])
BUILTIN_MODELS = [m for m, spec in config["models"].items() if spec["source"] == "builtin"]
DATASETS = list(config["datasets"])
# (model, dataset) for every dataset each model is analysed on; EAP once per dataset feature.
RUNS = [(m, d) for m, entry in config["models"].items() for d in entry["analyse_on"]]
FEATURE_RUNS = [(m, d, f) for m, d in RUNS for f in config["datasets"][d]["features"]]
# Greedy pruning runs on the pairs of a dataset's first feature.
PAIR_RUNS = [(m, d) for m, d in RUNS if config["datasets"][d]["features"]]
# Node PCA needs class labels: the runs on datasets without them are skipped, and said so.
CLASS_RUNS = [(m, d) for m, d in RUNS if task_of(config["datasets"][d]).has_classes(config["datasets"][d])]
for _dataset in sorted({d for m, d in RUNS} - {d for m, d in CLASS_RUNS}):
    print(
        f"circuitflow: no node_pca for dataset {_dataset}: its examples have no class labels "
        f"(task {config['datasets'][_dataset]['task']}; see its `classes` option or column)",
        file=sys.stderr,
    )
# One environment for every rule, the one the README installs (used with --use-conda).
CONDA_ENV = "../../environment.yml"


def _alternatives(names):
    return "|".join(map(re.escape, names)) if names else "(?!x)x"


wildcard_constraints:
    model=_alternatives(MODELS),
    dataset=_alternatives(DATASETS),
    feature=_alternatives(sorted({f for _, _, f in FEATURE_RUNS})),


# Each of the rules is a stage of the package; these derive its inputs, params and command from
# the stage's declaration (circuitflow.stage), so none of them is written twice.

def stage_input(name, **named):
    """Input function: the named inputs (paths, patterns of the job's wildcards, or functions of
    them), the package files the stage runs and the files that define the model and the dataset
    the stage reads."""
    reads = stage(name).reads

    def inputs(wildcards):
        values = dict(wildcards.items())
        paths = {
            key: value.format(**values) if isinstance(value, str)
            else value(wildcards) if callable(value) else value
            for key, value in named.items()
        }
        if "model" in reads:
            paths["model"] = model_files(model_spec(config, wildcards.model))
        if "dataset" in reads:
            paths["dataset"] = dataset_files(dataset_spec(config, wildcards.dataset))
        paths["code"] = code_inputs(name, job_tasks(name, config, values))
        return paths

    return inputs


def first_feature_pairs(wildcards):
    """Greedy pruning's pairs: those of the dataset's first feature."""
    feature = config["datasets"][wildcards.dataset]["features"][0]
    return f"results/{wildcards.model}/{wildcards.dataset}/eap/{feature}/pairs.parquet"


def stage_params(name, **job):
    """The JSON of exactly the config keys the stage declares, for this job."""
    return lambda wildcards: params_json(name, config, dict(wildcards), **job)


def stage_command(name):
    """``python -m circuitflow NAME input=... output=... --params ...``, logged."""
    declared = stage(name)
    paths = [f"{i}={{input.{i}:q}}" for i in declared.inputs]
    paths += [f"{o}={{output.{o}:q}}" for o in declared.outputs]
    return (
        f"python -m circuitflow {name} {' '.join(paths)}"
        " --params {params.settings:q} > {log:q} 2>&1"
    )
