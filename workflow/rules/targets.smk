def all_targets():
    """Every final output: each built-in model's training, each (model, dataset) analysis and
    each of its features' EAP, and the summary across them."""
    runs = [f"results/{m}/{d}" for m, d in RUNS]
    return [
        "results/summary/comparison.png",
        "results/interactive",
        *expand("results/{model}/training/training_curve.png", model=BUILTIN_MODELS),
        *expand(
            "{run}/{output}", run=runs,
            output=[
                "clean.parquet", "position_ablation.parquet", "node_ablation_detail.parquet",
                "node_ablation_by_role.parquet", "ablation_heatmaps.png",
                "position_fail_rate.png", "quanta_map.png", "ablation_by_role.png",
                "circuits/qk_circuits.png", "circuits/logit_attribution.png",
            ],
        ),
        *[f"results/{m}/{d}/pca/pca_scatter.png" for m, d in CLASS_RUNS],
        *[f"results/{m}/{d}/pruning/circuit.json" for m, d in PAIR_RUNS],
        *[
            f"results/{m}/{d}/eap/{f}/{output}" for m, d, f in FEATURE_RUNS
            for output in ("eap_results.json", "graph.json", "sankey.png", "faithfulness.png",
                           "pair_logit_attribution.png")
        ],
    ]
