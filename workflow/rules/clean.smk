rule clean_accuracy:
    input:
        examples="results/data/{command_set}/examples.parquet",
        model=model_input,
        code=sources(
            "clean.py", "token_roles.py", "batching.py", "models/loader.py", "tables.py"
        ),
    output:
        "results/{model}/{command_set}/clean.parquet",
    params:
        settings=lambda w: stage_params(
            model=model_spec(w.model), clean=config["clean"], device=config["device"]
        ),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/clean_accuracy/{model}_{command_set}.log",
    benchmark:
        "results/benchmarks/clean_accuracy/{model}_{command_set}.tsv"
    shell:
        "python -m circuitflow clean-accuracy examples={input.examples:q} out={output:q}"
        " --params {params.settings:q} > {log:q} 2>&1"
