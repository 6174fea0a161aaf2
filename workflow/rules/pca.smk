# Does a node's output separate the dataset's classes? Only for datasets whose examples have them.


rule node_pca:
    input:
        unpack(stage_input(
            "node-pca", clean=rules.clean_accuracy.output.out,
            examples=rules.generate_examples.output.out, useful=rules.useful_nodes.output.out,
        )),
    output:
        summary="results/{model}/{dataset}/pca/pca_nodes.parquet",
        points="results/{model}/{dataset}/pca/pca_points.parquet",
        tags="results/{model}/{dataset}/pca/pca_tags.json",
        scatter=report(
            "results/{model}/{dataset}/pca/pca_scatter.png",
            caption="../report/pca_scatter.rst", category="Node PCA",
            subcategory="{model} {dataset}", labels={"figure": "PC0-PC1 of the most separating nodes"},
        ),
        scatter_interactive="results/{model}/{dataset}/pca/pca_scatter.plotly.json",
        heatmap=report(
            "results/{model}/{dataset}/pca/pca_heatmap.png",
            caption="../report/pca_heatmap.rst", category="Node PCA",
            subcategory="{model} {dataset}", labels={"figure": "Class separation per node"},
        ),
    params:
        settings=stage_params("node-pca"),
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    log:
        "results/logs/node_pca/{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/node_pca/{model}_{dataset}.tsv"
    shell:
        stage_command("node-pca")
