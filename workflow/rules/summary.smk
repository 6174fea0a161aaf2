SWEEP_RUNS = [(m, c) for m in MODELS for c in COMMAND_SETS]
EDGE_RUNS = [(m, c, f) for m, c in SWEEP_RUNS for f in config["eap"]["features"]]


rule summary:
    input:
        clean=[f"results/{m}/{c}/clean.parquet" for m, c in SWEEP_RUNS],
        useful=[f"results/{m}/{c}/useful_nodes.json" for m, c in SWEEP_RUNS],
        top_edges=[f"results/{m}/{c}/eap/{f}/top_edges.parquet" for m, c, f in EDGE_RUNS],
        code=sources("summary.py", "tables.py", "outputs.py"),
    output:
        accuracy="results/summary/clean_accuracy.parquet",
        useful="results/summary/useful_nodes_per_layer.parquet",
        edges="results/summary/top_edges.parquet",
        plot=report(
            "results/summary/comparison.png", caption="../report/comparison.rst",
            category="Sweep summary",
        ),
    params:
        settings=stage_params(runs=SWEEP_RUNS, edge_runs=EDGE_RUNS, plots=config["plots"]),
        inputs=lambda w, input: " ".join([
            repeated_arg("clean", input.clean),
            repeated_arg("useful", input.useful),
            repeated_arg("top_edges", input.top_edges),
        ]),
    conda:
        CONDA_ENV
    log:
        "results/logs/summary/summary.log",
    benchmark:
        "results/benchmarks/summary/summary.tsv"
    shell:
        "python -m circuitflow summary {params.inputs} accuracy_out={output.accuracy:q}"
        " useful_out={output.useful:q} edges_out={output.edges:q} plot={output.plot:q}"
        " --params {params.settings:q} > {log:q} 2>&1"
