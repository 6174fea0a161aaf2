"""Ablation stages: which token positions, attention heads and MLPs a model needs to answer."""
