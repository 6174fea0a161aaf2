"""Edge attribution patching: clean/corrupt pairs -> edge scores -> circuit faithfulness -> plots.

``pairs`` makes the pairs; ``graph`` names the nodes, receivers and edges; ``bridge`` runs a
model as that graph (recording, patching, receiver gradients); ``batches`` turns pairs into
token batches and the logit-difference metric; ``attribution`` scores edges (EAP, EAP-IG);
``faithfulness`` measures the top-k circuits by exact edge patching; ``diagnostics`` reads
whether a run is ill-conditioned; ``sankey`` draws the top edges and ``plots`` the stage's
figures.
"""
