def all_targets():
    """Every final output of the configured sweep: models x command sets x EAP features."""
    return [
        "results/summary/comparison.png",
        *expand("results/{model}/training/training_curve.png", model=BUILTIN_MODELS),
        *expand("results/{model}/{command_set}/clean.parquet", model=MODELS, command_set=COMMAND_SETS),
        *expand(
            "results/{model}/{command_set}/eap/{feature}/{output}",
            model=MODELS, command_set=COMMAND_SETS, feature=config["eap"]["features"],
            output=["eap_results.json", "sankey.html", "sankey.png", "faithfulness.png"],
        ),
        *expand(
            "results/{model}/{command_set}/{output}",
            model=MODELS, command_set=COMMAND_SETS,
            output=[
                "position_ablation.parquet", "node_ablation_detail.parquet",
                "node_ablation_by_role.parquet", "ablation_heatmaps.png", "ablation_heatmaps.html",
                "position_fail_rate.png", "quanta_map.png",
            ],
        ),
    ]
