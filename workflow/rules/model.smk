rule train_model:
    wildcard_constraints:
        model=_alternatives(BUILTIN_MODELS),
    input:
        unpack(stage_input("train-model")),
    output:
        model=directory("results/models/{model}"),
        curve="results/{model}/training/curve.parquet",
        plot=report(
            "results/{model}/training/training_curve.png",
            caption="../report/training_curve.rst", category="Built-in model",
        ),
        heldout="results/{model}/training/heldout_accuracy.parquet",
    params:
        settings=stage_params("train-model"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/train_model/{model}.log",
    benchmark:
        "results/benchmarks/train_model/{model}.tsv"
    shell:
        stage_command("train-model")
