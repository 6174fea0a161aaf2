"""Plots of a pruning run: the score at every step, and the kept heads drawn per layer."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.transforms import blended_transform_factory

# Scores far outside this range would flatten the T band; such points sit at the border.
SHOWN_SCORES = (-100.0, 300.0)


def score_curve_figure(steps: pd.DataFrame, threshold: float, start_score: float, title: str):
    """Score % without each visited node (dots: dropped, crosses: kept), the current circuit's
    score as a line, and the band of scores within T of the full model (100 - T and up)."""
    scores = steps["score_without"].to_numpy(dtype=float)
    removed = steps["removed"].to_numpy(dtype=bool)
    step = steps["step"].to_numpy()
    current = np.maximum.accumulate(np.where(removed, step, -1))
    circuit_score = np.where(current >= 0, scores[np.maximum(current, 0)], start_score)
    low, high = SHOWN_SCORES
    clipped = bool(((scores < low) | (scores > high)).any())
    shown = np.clip(scores, low, high)

    fig, ax = plt.subplots(figsize=(min(4 + 0.04 * len(steps), 16), 4.5))
    # Scores above 100 count as within T too: the band runs to the top.
    low_end = min(shown.min(initial=100), 100 - threshold)
    high_end = max(shown.max(initial=100), 100)
    margin = 0.05 * (high_end - low_end) + 0.5
    ax.set_ylim(low_end - margin, high_end + margin)
    ax.axhspan(100 - threshold, high_end + margin, color="tab:green", alpha=0.15, lw=0,
               label=f"within T = {threshold:g}%: dropped")
    ax.axhline(100, color="grey", lw=0.8, ls=":")
    ax.step(step, np.clip(circuit_score, low, high), where="post", color="grey", lw=1,
            label="circuit so far")
    ax.scatter(step[removed], shown[removed], s=14, color="tab:blue", label="dropped")
    ax.scatter(step[~removed], shown[~removed], s=22, color="tab:red", marker="x", label="kept")
    layers = steps["layer"].to_numpy()
    starts = np.flatnonzero(np.r_[True, layers[1:] != layers[:-1]])
    top = blended_transform_factory(ax.transData, ax.transAxes)
    for s in starts:
        ax.axvline(s - 0.5, color="lightgrey", lw=0.6, zorder=0)
        ax.text(s - 0.3, 1.01, f"L{layers[s]}", transform=top, fontsize=7, color="grey")
    n_kept = int((~removed).sum())
    ax.set_title(f"{title}: kept {n_kept} of {len(steps)} nodes, dropped {int(removed.sum())}",
                 pad=14)
    ax.set_xlabel("step (nodes in visiting order; L: layer)")
    ylabel = "score without the node (% of full model)"
    ax.set_ylabel(ylabel + (f"\n(clipped to {low:g}..{high:g})" if clipped else ""))
    ax.set_xlim(-1, len(steps))
    ax.legend(fontsize=8, loc="best")
    return fig


def kept_heads_figure(
    nodes: list[str], kept: np.ndarray, n_layers: int, n_heads: int, title: str
):
    """Grid of layers (rows, layer 0 at the bottom) by heads (and the MLP when prunable)."""
    include_mlps = len(nodes) == n_layers * (n_heads + 1)
    columns = n_heads + include_mlps
    grid = np.asarray(kept, dtype=float).reshape(n_layers, columns)
    fig, ax = plt.subplots(figsize=(2 + 0.35 * columns, 1.2 + 0.3 * n_layers))
    ax.imshow(grid, origin="lower", cmap=ListedColormap(["#eeeeee", "tab:blue"]), vmin=0, vmax=1,
              aspect="auto")
    ax.set_xticks(range(columns), [str(h) for h in range(n_heads)] + ["MLP"] * include_mlps,
                  fontsize=7)
    ax.set_yticks(range(n_layers), [str(l) for l in range(n_layers)], fontsize=7)
    ax.set_xticks(np.arange(columns + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n_layers + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=1)
    ax.tick_params(which="minor", length=0)
    for layer in range(n_layers):
        ax.text(columns - 0.4, layer, f"{int(grid[layer, :n_heads].sum())}/{n_heads}",
                va="center", fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    heads_kept = int(grid[:, :n_heads].sum())
    mlps = f", {int(grid[:, n_heads:].sum())} of {n_layers} MLPs" if include_mlps else ""
    ax.set_title(f"{title}: {heads_kept} of {n_layers * n_heads} heads kept{mlps}", fontsize=10)
    return fig
