# Edge attribution patching: clean/corrupt pairs -> edge scores -> circuit faithfulness -> plots.

wildcard_constraints:
    feature=_alternatives(config["eap"]["features"]),


rule corrupt_pairs:
    input:
        model=model_input,
        code=sources(
            "eap/pairs.py", "data/examples.py", "data/phrasing.py", "data/vocabulary.py",
            "clean.py", "batching.py", "models/loader.py", "tables.py",
        ),
    output:
        "results/{model}/{command_set}/eap/{feature}/pairs.parquet",
    params:
        settings=lambda w: stage_params(
            model=model_spec(w.model), eap=pair_settings(), device=config["device"],
            command_set=w.command_set, feature=w.feature,
        ),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/corrupt_pairs/{model}_{command_set}_{feature}.log",
    benchmark:
        "results/benchmarks/corrupt_pairs/{model}_{command_set}_{feature}.tsv"
    shell:
        "python -m circuitflow corrupt-pairs out={output:q} --params {params.settings:q} > {log:q} 2>&1"


rule eap:
    input:
        pairs=rules.corrupt_pairs.output[0],
        model=model_input,
        code=sources(
            "eap/attribution.py", "eap/batches.py", "eap/bridge.py", "eap/graph.py",
            "batching.py", "models/loader.py", "tables.py", "outputs.py",
        ),
    output:
        edges="results/{model}/{command_set}/eap/{feature}/edges.parquet",
        top_edges="results/{model}/{command_set}/eap/{feature}/top_edges.parquet",
        results_json="results/{model}/{command_set}/eap/{feature}/eap_results.json",
    params:
        settings=lambda w: stage_params(
            model=model_spec(w.model), eap=config["eap"], device=config["device"],
            command_set=w.command_set, feature=w.feature,
        ),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/eap/{model}_{command_set}_{feature}.log",
    benchmark:
        "results/benchmarks/eap/{model}_{command_set}_{feature}.tsv"
    shell:
        "python -m circuitflow eap pairs={input.pairs:q} edges={output.edges:q}"
        " top_edges={output.top_edges:q} results_json={output.results_json:q}"
        " --params {params.settings:q} > {log:q} 2>&1"


rule faithfulness:
    input:
        pairs=rules.corrupt_pairs.output[0],
        edges=rules.eap.output.edges,
        model=model_input,
        code=sources(
            "eap/faithfulness.py", "eap/batches.py", "eap/bridge.py", "eap/graph.py",
            "batching.py", "models/loader.py", "tables.py",
        ),
    output:
        "results/{model}/{command_set}/eap/{feature}/faithfulness.parquet",
    params:
        settings=lambda w: stage_params(
            model=model_spec(w.model), faithfulness=config["faithfulness"], device=config["device"]
        ),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/faithfulness/{model}_{command_set}_{feature}.log",
    benchmark:
        "results/benchmarks/faithfulness/{model}_{command_set}_{feature}.tsv"
    shell:
        "python -m circuitflow faithfulness pairs={input.pairs:q} edges={input.edges:q}"
        " out={output:q} --params {params.settings:q} > {log:q} 2>&1"


rule eap_plots:
    input:
        top_edges=rules.eap.output.top_edges,
        faithfulness=rules.faithfulness.output[0],
        code=sources("eap/plots.py", "tables.py", "outputs.py"),
    output:
        sankey_html=report(
            "results/{model}/{command_set}/eap/{feature}/sankey.html",
            caption="../report/sankey.rst", category="EAP", subcategory="{model} {command_set}",
            labels={"feature": "{feature}", "figure": "Sankey (interactive)"},
        ),
        sankey_png=report(
            "results/{model}/{command_set}/eap/{feature}/sankey.png",
            caption="../report/sankey.rst", category="EAP", subcategory="{model} {command_set}",
            labels={"feature": "{feature}", "figure": "Sankey"},
        ),
        faithfulness_png=report(
            "results/{model}/{command_set}/eap/{feature}/faithfulness.png",
            caption="../report/faithfulness.rst", category="EAP",
            subcategory="{model} {command_set}",
            labels={"feature": "{feature}", "figure": "Faithfulness"},
        ),
    params:
        # model_name only titles the plots; the model itself is not read.
        settings=lambda w: stage_params(
            plots=config["plots"], model_name=w.model, command_set=w.command_set,
            feature=w.feature,
        ),
    conda:
        CONDA_ENV
    log:
        "results/logs/eap_plots/{model}_{command_set}_{feature}.log",
    benchmark:
        "results/benchmarks/eap_plots/{model}_{command_set}_{feature}.tsv"
    shell:
        "python -m circuitflow eap-plots top_edges={input.top_edges:q}"
        " faithfulness={input.faithfulness:q} sankey_html={output.sankey_html:q}"
        " sankey_png={output.sankey_png:q} faithfulness_png={output.faithfulness_png:q}"
        " --params {params.settings:q} > {log:q} 2>&1"
