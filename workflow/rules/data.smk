rule generate_examples:
    input:
        unpack(stage_input("generate-examples")),
    output:
        out="results/data/{dataset}/examples.parquet",
    params:
        settings=stage_params("generate-examples"),
    conda:
        CONDA_ENV
    log:
        "results/logs/generate_examples/{dataset}.log",
    benchmark:
        "results/benchmarks/generate_examples/{dataset}.tsv"
    shell:
        stage_command("generate-examples")
