# Seed 004's circuit search: mean-ablate heads one by one, keep those the answer needs.


rule greedy_pruning:
    input:
        unpack(stage_input("greedy-pruning", pairs=first_feature_pairs)),
    output:
        steps="results/{model}/{dataset}/pruning/pruning_steps.parquet",
        circuit="results/{model}/{dataset}/pruning/circuit.json",
        score_curve=report(
            "results/{model}/{dataset}/pruning/score_curve.png",
            caption="../report/score_curve.rst", category="Greedy pruning",
            subcategory="{model} {dataset}", labels={"figure": "Score per step"},
        ),
        kept_heads=report(
            "results/{model}/{dataset}/pruning/kept_heads.png",
            caption="../report/kept_heads.rst", category="Greedy pruning",
            subcategory="{model} {dataset}", labels={"figure": "Kept heads"},
        ),
    params:
        settings=stage_params("greedy-pruning"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/greedy_pruning/{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/greedy_pruning/{model}_{dataset}.tsv"
    shell:
        stage_command("greedy-pruning")
