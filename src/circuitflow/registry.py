"""Every stage by its command name, and the module that declares it (``STAGE``).

Not a code input of any job: adding a stage here must not rerun the others, and a changed entry
changes that stage's code inputs, which reruns its jobs anyway.
"""

REGISTRY = {
    "generate-examples": "circuitflow.examples",
    "train-model": "circuitflow.models.training",
    "clean-accuracy": "circuitflow.clean",
    "position-ablation": "circuitflow.ablation.positions",
    "node-ablation": "circuitflow.ablation.nodes",
    "useful-nodes": "circuitflow.ablation.useful",
    "ablation-plots": "circuitflow.ablation.plots",
    "corrupt-pairs": "circuitflow.eap.pairs",
    "eap": "circuitflow.eap.attribution",
    "faithfulness": "circuitflow.eap.faithfulness",
    "eap-plots": "circuitflow.eap.plots",
    "greedy-pruning": "circuitflow.pruning.greedy",
    "node-pca": "circuitflow.node_pca",
    "weight-circuits": "circuitflow.weight_circuits",
    "logit-attribution": "circuitflow.logit_attribution",
    "pair-logit-attribution": "circuitflow.pair_logit_attribution",
    "summary": "circuitflow.summary",
    "interactive-figures": "circuitflow.interactive",
}
