# circuitflow: circuit analyses of small transformers as a cached DAG. Settings: config.yaml.
# Rules live in workflow/rules/; the default target stays here because Snakemake takes it only
# from the main Snakefile.
include: "workflow/rules/common.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/clean.smk"
include: "workflow/rules/eap.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/circuits.smk"
include: "workflow/rules/pca.smk"
include: "workflow/rules/pruning.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/interactive.smk"


rule all:
    input:
        all_targets(),
