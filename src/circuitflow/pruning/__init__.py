"""Greedy circuit pruning by mean ablation: drop heads (and MLPs) while the logit difference
stays within T% of the full model's.

``positions`` says where a node of the circuit keeps its own output; ``intervention`` scores
many candidate circuits in one batched forward pass; ``search`` walks the nodes and decides,
with speculative chains of candidates; ``plots`` draws the score curve and the kept heads;
``greedy`` is the stage.
"""
