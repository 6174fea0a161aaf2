def all_targets():
    """Every final output: each built-in model's training, each (model, dataset) analysis and
    each of its features' EAP, and the summary across them."""
    runs = [f"results/{m}/{d}" for m, d in RUNS]
    return [
        "results/summary/comparison.png",
        *expand("results/{model}/training/training_curve.png", model=BUILTIN_MODELS),
        *expand(
            "{run}/{output}", run=runs,
            output=[
                "clean.parquet", "position_ablation.parquet", "node_ablation_detail.parquet",
                "node_ablation_by_role.parquet", "ablation_heatmaps.png", "ablation_heatmaps.html",
                "position_fail_rate.png", "quanta_map.png", "ablation_by_role.png", "circuits/weight_circuits.html",
                "circuits/logit_attribution.html",
            ],
        ),
        *[f"results/{m}/{d}/pca/pca_scatter.html" for m, d in CLASS_RUNS],
        *[f"results/{m}/{d}/pruning/circuit.json" for m, d in PAIR_RUNS],
        *[
            f"results/{m}/{d}/eap/{f}/{output}" for m, d, f in FEATURE_RUNS
            for output in ("eap_results.json", "graph.json", "sankey.html", "sankey.png", "faithfulness.png",
                           "pair_logit_attribution.png")
        ],
    ]
