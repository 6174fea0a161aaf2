# circuitflow: TinySQL circuit analyses as a cached DAG. Settings: config.yaml.
include: "workflow/rules/common.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/clean.smk"
include: "workflow/rules/eap.smk"
