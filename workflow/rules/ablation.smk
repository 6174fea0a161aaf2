ABLATION_CODE = [
    "ablation/engine.py", "ablation/examples.py", "ablation/layout.py", "ablation/summary.py",
    "batching.py", "models/loader.py", "tables.py",
]
# Each stage gets only the ablation keys it reads: a new useful_threshold reruns no positions.


rule position_ablation:
    input:
        clean="results/{model}/{command_set}/clean.parquet",
        model=model_input,
        code=sources("ablation/positions.py", *ABLATION_CODE),
    output:
        detail="results/{model}/{command_set}/position_ablation.parquet",
        summary="results/{model}/{command_set}/position_summary.parquet",
    params:
        settings=lambda w: stage_params(
            model=model_spec(w.model), device=config["device"],
            ablation={k: config["ablation"][k] for k in ("n_examples", "batch_size")},
        ),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/position_ablation/{model}_{command_set}.log",
    benchmark:
        "results/benchmarks/position_ablation/{model}_{command_set}.tsv"
    shell:
        "python -m circuitflow position-ablation clean={input.clean:q}"
        " detail={output.detail:q} summary={output.summary:q}"
        " --params {params.settings:q} > {log:q} 2>&1"


rule node_ablation:
    input:
        clean="results/{model}/{command_set}/clean.parquet",
        model=model_input,
        code=sources("ablation/nodes.py", *ABLATION_CODE),
    output:
        detail="results/{model}/{command_set}/node_ablation_detail.parquet",
        summary="results/{model}/{command_set}/node_ablation.parquet",
        by_role="results/{model}/{command_set}/node_ablation_by_role.parquet",
    params:
        settings=lambda w: stage_params(
            model=model_spec(w.model), device=config["device"],
            ablation={
                k: config["ablation"][k]
                for k in ("n_examples", "method", "seed", "batch_size")
            },
        ),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/node_ablation/{model}_{command_set}.log",
    benchmark:
        "results/benchmarks/node_ablation/{model}_{command_set}.tsv"
    shell:
        "python -m circuitflow node-ablation clean={input.clean:q}"
        " detail={output.detail:q} summary={output.summary:q} by_role={output.by_role:q}"
        " --params {params.settings:q} > {log:q} 2>&1"


rule useful_nodes:
    input:
        summary=rules.node_ablation.output.summary,
        code=sources("ablation/useful.py", "tables.py", "outputs.py"),
    output:
        "results/{model}/{command_set}/useful_nodes.json",
    params:
        settings=stage_params(ablation={"useful_threshold": config["ablation"]["useful_threshold"]}),
    conda:
        CONDA_ENV
    log:
        "results/logs/useful_nodes/{model}_{command_set}.log",
    benchmark:
        "results/benchmarks/useful_nodes/{model}_{command_set}.tsv"
    shell:
        "python -m circuitflow useful-nodes summary={input.summary:q} out={output:q}"
        " --params {params.settings:q} > {log:q} 2>&1"


rule ablation_plots:
    input:
        nodes=rules.node_ablation.output.summary,
        positions=rules.position_ablation.output.summary,
        useful=rules.useful_nodes.output[0],
        code=sources("ablation/plots.py", "tables.py", "outputs.py"),
    output:
        heatmaps=report(
            "results/{model}/{command_set}/ablation_heatmaps.png",
            caption="../report/ablation_heatmaps.rst", category="Ablation",
            subcategory="{model} {command_set}", labels={"figure": "Node fail % per layer"},
        ),
        heatmaps_page=report(
            "results/{model}/{command_set}/ablation_heatmaps.html",
            caption="../report/ablation_heatmaps.rst", category="Ablation",
            subcategory="{model} {command_set}",
            labels={"figure": "Node fail % per layer (interactive)"},
        ),
        position_chart=report(
            "results/{model}/{command_set}/position_fail_rate.png",
            caption="../report/position_fail_rate.rst", category="Ablation",
            subcategory="{model} {command_set}", labels={"figure": "Position fail %"},
        ),
        quanta_map=report(
            "results/{model}/{command_set}/quanta_map.png",
            caption="../report/quanta_map.rst", category="Ablation",
            subcategory="{model} {command_set}", labels={"figure": "Quanta map"},
        ),
    params:
        # model_name only titles the plots; the model itself is not read.
        settings=lambda w: stage_params(
            plots=config["plots"], model_name=w.model, command_set=w.command_set
        ),
    conda:
        CONDA_ENV
    log:
        "results/logs/ablation_plots/{model}_{command_set}.log",
    benchmark:
        "results/benchmarks/ablation_plots/{model}_{command_set}.tsv"
    shell:
        "python -m circuitflow ablation-plots nodes={input.nodes:q} positions={input.positions:q}"
        " useful={input.useful:q} heatmaps={output.heatmaps:q}"
        " heatmaps_page={output.heatmaps_page:q} position_chart={output.position_chart:q}"
        " quanta_map={output.quanta_map:q} --params {params.settings:q} > {log:q} 2>&1"
