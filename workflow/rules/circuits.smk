# What the weights say (QK and OV circuits) and what each component adds to the answer (DLA).


rule weight_circuits:
    input:
        unpack(stage_input("weight-circuits", clean=rules.clean_accuracy.output.out)),
    output:
        table="results/{model}/{dataset}/circuits/weight_circuits.parquet",
        qk_plot=report(
            "results/{model}/{dataset}/circuits/qk_circuits.png",
            caption="../report/qk_circuits.rst", category="Weight circuits",
            subcategory="{model} {dataset}", labels={"figure": "QK circuits"},
        ),
        ov_plot=report(
            "results/{model}/{dataset}/circuits/ov_circuits.png",
            caption="../report/ov_circuits.rst", category="Weight circuits",
            subcategory="{model} {dataset}", labels={"figure": "OV circuits"},
        ),
        interactive="results/{model}/{dataset}/circuits/weight_circuits.plotly.json",
    params:
        settings=stage_params("weight-circuits"),
    conda:
        CONDA_ENV
    log:
        "results/logs/weight_circuits/{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/weight_circuits/{model}_{dataset}.tsv"
    shell:
        stage_command("weight-circuits")


rule logit_attribution:
    input:
        unpack(stage_input("logit-attribution", clean=rules.clean_accuracy.output.out)),
    output:
        table="results/{model}/{dataset}/circuits/logit_attribution.parquet",
        plot=report(
            "results/{model}/{dataset}/circuits/logit_attribution.png",
            caption="../report/logit_attribution.rst", category="Weight circuits",
            subcategory="{model} {dataset}", labels={"figure": "Direct logit attribution"},
        ),
        interactive="results/{model}/{dataset}/circuits/logit_attribution.plotly.json",
    params:
        settings=stage_params("logit-attribution"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/logit_attribution/{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/logit_attribution/{model}_{dataset}.tsv"
    shell:
        stage_command("logit-attribution")


rule pair_logit_attribution:
    input:
        unpack(stage_input("pair-logit-attribution", pairs=rules.corrupt_pairs.output.out)),
    output:
        table="results/{model}/{dataset}/eap/{feature}/pair_logit_attribution.parquet",
        plot=report(
            "results/{model}/{dataset}/eap/{feature}/pair_logit_attribution.png",
            caption="../report/pair_logit_attribution.rst", category="Weight circuits",
            subcategory="{model} {dataset}",
            labels={"feature": "{feature}", "figure": "Logit attribution, clean - corrupt"},
        ),
    params:
        settings=stage_params("pair-logit-attribution"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/pair_logit_attribution/{model}_{dataset}_{feature}.log",
    benchmark:
        "results/benchmarks/pair_logit_attribution/{model}_{dataset}_{feature}.tsv"
    shell:
        stage_command("pair-logit-attribution")
