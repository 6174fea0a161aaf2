rule all:
    default_target: True
    input:
        expand("results/{model}/training/training_curve.png", model=BUILTIN_MODELS),
        expand("results/{model}/{command_set}/clean.parquet", model=MODELS, command_set=COMMAND_SETS),
        expand(
            "results/{model}/{command_set}/eap/{feature}/{output}",
            model=MODELS, command_set=COMMAND_SETS, feature=config["eap"]["features"],
            output=["eap_results.json", "sankey.html", "sankey.png", "faithfulness.png"],
        ),
