rule generate_examples:
    input:
        code=sources("data/examples.py", "data/vocabulary.py", "data/phrasing.py", "tables.py"),
    output:
        "results/data/{command_set}/examples.parquet",
    params:
        settings=lambda w: stage_params(command_set=w.command_set, data=config["data"]),
    conda:
        CONDA_ENV
    log:
        "results/logs/generate_examples/{command_set}.log",
    benchmark:
        "results/benchmarks/generate_examples/{command_set}.tsv"
    shell:
        "python -m circuitflow generate-examples out={output:q} --params {params.settings:q} > {log:q} 2>&1"
