rule all:
    input:
        expand("results/{model}/training/training_curve.png", model=BUILTIN_MODELS),
        expand("results/{model}/{command_set}/clean.parquet", model=MODELS, command_set=COMMAND_SETS),
