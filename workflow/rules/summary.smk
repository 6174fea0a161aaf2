rule summary:
    input:
        unpack(stage_input(
            "summary",
            clean=[f"results/{m}/{c}/clean.parquet" for m, c in RUNS],
            useful=[f"results/{m}/{c}/useful_nodes.json" for m, c in RUNS],
            top_edges=[f"results/{m}/{c}/eap/{f}/top_edges.parquet" for m, c, f in FEATURE_RUNS],
            eap_results=[f"results/{m}/{c}/eap/{f}/eap_results.json" for m, c, f in FEATURE_RUNS],
            circuits=[f"results/{m}/{c}/pruning/circuit.json" for m, c in PAIR_RUNS],
        )),
    output:
        accuracy_out="results/summary/clean_accuracy.parquet",
        useful_out="results/summary/useful_nodes_per_layer.parquet",
        edges_out="results/summary/top_edges.parquet",
        overlap_out="results/summary/node_overlap.parquet",
        plot=report(
            "results/summary/comparison.png", caption="../report/comparison.rst",
            category="Sweep summary",
        ),
    params:
        settings=stage_params("summary", runs=RUNS, edge_runs=FEATURE_RUNS, pair_runs=PAIR_RUNS),
    conda:
        CONDA_ENV
    log:
        "results/logs/summary/summary.log",
    benchmark:
        "results/benchmarks/summary/summary.tsv"
    shell:
        stage_command("summary")
