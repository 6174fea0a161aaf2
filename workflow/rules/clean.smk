rule clean_accuracy:
    input:
        unpack(stage_input("clean-accuracy", examples=rules.generate_examples.output.out)),
    output:
        out="results/{model}/{dataset}/clean.parquet",
    params:
        settings=stage_params("clean-accuracy"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/clean_accuracy/{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/clean_accuracy/{model}_{dataset}.tsv"
    shell:
        stage_command("clean-accuracy")
