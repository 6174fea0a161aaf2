rule train_model:
    input:
        code=sources(
            "models/training.py", "models/tokenizer.py", "data/examples.py",
            "data/vocabulary.py", "data/phrasing.py", "clean.py", "batching.py", "outputs.py",
            "tables.py",
        ),
    output:
        model=directory("results/models/{builtin_model}"),
        curve="results/{builtin_model}/training/curve.parquet",
        plot=report(
            "results/{builtin_model}/training/training_curve.png",
            caption="../report/training_curve.rst", category="Built-in model",
        ),
        heldout="results/{builtin_model}/training/heldout_accuracy.parquet",
    params:
        settings=lambda w: stage_params(training=config["training"], device=config["device"]),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/train_model/{builtin_model}.log",
    benchmark:
        "results/benchmarks/train_model/{builtin_model}.tsv"
    shell:
        "python -m circuitflow train-model model={output.model:q} curve={output.curve:q}"
        " plot={output.plot:q} heldout={output.heldout:q}"
        " --params {params.settings:q} > {log:q} 2>&1"
