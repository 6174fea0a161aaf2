rule position_ablation:
    input:
        unpack(stage_input("position-ablation", clean=rules.clean_accuracy.output.out)),
    output:
        detail="results/{model}/{dataset}/position_ablation.parquet",
        summary="results/{model}/{dataset}/position_summary.parquet",
    params:
        settings=stage_params("position-ablation"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/position_ablation/{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/position_ablation/{model}_{dataset}.tsv"
    shell:
        stage_command("position-ablation")


rule node_ablation:
    input:
        unpack(stage_input("node-ablation", clean=rules.clean_accuracy.output.out)),
    output:
        detail="results/{model}/{dataset}/node_ablation_detail.parquet",
        summary="results/{model}/{dataset}/node_ablation.parquet",
        by_role="results/{model}/{dataset}/node_ablation_by_role.parquet",
    params:
        settings=stage_params("node-ablation"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/node_ablation/{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/node_ablation/{model}_{dataset}.tsv"
    shell:
        stage_command("node-ablation")


rule useful_nodes:
    input:
        unpack(stage_input("useful-nodes", summary=rules.node_ablation.output.summary)),
    output:
        out="results/{model}/{dataset}/useful_nodes.json",
    params:
        settings=stage_params("useful-nodes"),
    conda:
        CONDA_ENV
    log:
        "results/logs/useful_nodes/{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/useful_nodes/{model}_{dataset}.tsv"
    shell:
        stage_command("useful-nodes")


rule ablation_plots:
    input:
        unpack(stage_input(
            "ablation-plots", nodes=rules.node_ablation.output.summary,
            positions=rules.position_ablation.output.summary,
            by_role=rules.node_ablation.output.by_role, useful=rules.useful_nodes.output.out,
        )),
    output:
        heatmaps=report(
            "results/{model}/{dataset}/ablation_heatmaps.png",
            caption="../report/ablation_heatmaps.rst", category="Ablation",
            subcategory="{model} {dataset}", labels={"figure": "Node fail % per layer"},
        ),
        heatmaps_interactive="results/{model}/{dataset}/ablation_heatmaps.plotly.json",
        position_chart=report(
            "results/{model}/{dataset}/position_fail_rate.png",
            caption="../report/position_fail_rate.rst", category="Ablation",
            subcategory="{model} {dataset}", labels={"figure": "Position fail %"},
        ),
        quanta_map=report(
            "results/{model}/{dataset}/quanta_map.png",
            caption="../report/quanta_map.rst", category="Ablation",
            subcategory="{model} {dataset}", labels={"figure": "Quanta map"},
        ),
        role_heatmap=report(
            "results/{model}/{dataset}/ablation_by_role.png",
            caption="../report/ablation_by_role.rst", category="Ablation",
            subcategory="{model} {dataset}", labels={"figure": "Node fail % per role"},
        ),
    params:
        settings=stage_params("ablation-plots"),
    conda:
        CONDA_ENV
    log:
        "results/logs/ablation_plots/{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/ablation_plots/{model}_{dataset}.tsv"
    shell:
        stage_command("ablation-plots")
