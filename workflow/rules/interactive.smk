# Every interactive figure in one folder, with plotly.js once: the report's "Interactive figures".


rule interactive_figures:
    input:
        unpack(stage_input(
            "interactive-figures",
            figures=[
                *[
                    f"results/{m}/{d}/{figure}.plotly.json" for m, d in RUNS
                    for figure in ("ablation_heatmaps", "circuits/weight_circuits",
                                   "circuits/logit_attribution")
                ],
                *[f"results/{m}/{d}/pca/pca_scatter.plotly.json" for m, d in CLASS_RUNS],
                *[f"results/{m}/{d}/eap/{f}/sankey.plotly.json" for m, d, f in FEATURE_RUNS],
            ],
        )),
    output:
        out=report(
            directory("results/interactive"), htmlindex="index.html",
            caption="../report/interactive.rst", category="Interactive figures",
        ),
    params:
        settings=stage_params("interactive-figures"),
    conda:
        CONDA_ENV
    log:
        "results/logs/interactive_figures/interactive_figures.log",
    benchmark:
        "results/benchmarks/interactive_figures/interactive_figures.tsv"
    shell:
        stage_command("interactive-figures")
