# Edge attribution patching: clean/corrupt pairs -> edge scores -> circuit faithfulness -> plots.

rule corrupt_pairs:
    input:
        unpack(stage_input("corrupt-pairs")),
    output:
        out="results/{model}/{dataset}/eap/{feature}/pairs.parquet",
    params:
        settings=stage_params("corrupt-pairs"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/corrupt_pairs/{model}_{dataset}_{feature}.log",
    benchmark:
        "results/benchmarks/corrupt_pairs/{model}_{dataset}_{feature}.tsv"
    shell:
        stage_command("corrupt-pairs")


rule eap:
    input:
        unpack(stage_input("eap", pairs=rules.corrupt_pairs.output.out)),
    output:
        edges="results/{model}/{dataset}/eap/{feature}/edges.parquet",
        top_edges="results/{model}/{dataset}/eap/{feature}/top_edges.parquet",
        results_json="results/{model}/{dataset}/eap/{feature}/eap_results.json",
        graph_json="results/{model}/{dataset}/eap/{feature}/graph.json",
    params:
        settings=stage_params("eap"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/eap/{model}_{dataset}_{feature}.log",
    benchmark:
        "results/benchmarks/eap/{model}_{dataset}_{feature}.tsv"
    shell:
        stage_command("eap")


rule faithfulness:
    input:
        unpack(stage_input(
            "faithfulness", pairs=rules.corrupt_pairs.output.out, edges=rules.eap.output.edges
        )),
    output:
        out="results/{model}/{dataset}/eap/{feature}/faithfulness.parquet",
        summary="results/{model}/{dataset}/eap/{feature}/faithfulness_summary.parquet",
    params:
        settings=stage_params("faithfulness"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/faithfulness/{model}_{dataset}_{feature}.log",
    benchmark:
        "results/benchmarks/faithfulness/{model}_{dataset}_{feature}.tsv"
    shell:
        stage_command("faithfulness")


rule eap_plots:
    input:
        unpack(stage_input(
            "eap-plots", top_edges=rules.eap.output.top_edges,
            faithfulness=rules.faithfulness.output.out,
            faithfulness_summary=rules.faithfulness.output.summary,
            results_json=rules.eap.output.results_json,
        )),
    output:
        sankey_interactive="results/{model}/{dataset}/eap/{feature}/sankey.plotly.json",
        sankey_png=report(
            "results/{model}/{dataset}/eap/{feature}/sankey.png",
            caption="../report/sankey.rst", category="EAP", subcategory="{model} {dataset}",
            labels={"feature": "{feature}", "figure": "Sankey"},
        ),
        faithfulness_png=report(
            "results/{model}/{dataset}/eap/{feature}/faithfulness.png",
            caption="../report/faithfulness.rst", category="EAP",
            subcategory="{model} {dataset}",
            labels={"feature": "{feature}", "figure": "Faithfulness"},
        ),
    params:
        settings=stage_params("eap-plots"),
    conda:
        CONDA_ENV
    log:
        "results/logs/eap_plots/{model}_{dataset}_{feature}.log",
    benchmark:
        "results/benchmarks/eap_plots/{model}_{dataset}_{feature}.tsv"
    shell:
        stage_command("eap-plots")
