"""Stage logit-attribution: how much each component adds to the logit of the reference next
token, at every answer position of the correct examples (direct logit attribution, seed 003).

The final residual stream x is the sum of what the components wrote into it: ``embed`` (token
embedding), ``pos_embed`` (positional embedding; rotary models have none), every head
``l{L}.h{H}`` (z_h @ W_O[h], its value bias included), ``l{L}.attn_bias`` (the attention output
projection's bias, where there is one) and every MLP ``l{L}.mlp``. The logit of token y is
W_U[y] · norm(x) (+ b_U[y]). With the norm's per-token scale σ(x) taken from the clean run the
norm is linear, and a component c contributes centred(c) · (w ⊙ W_U[y]) / σ(x), where
centred(c) is c minus its mean over d_model for LayerNorm (RMSNorm: c itself) and w the norm's
weight; the norm's bias adds ``final_norm.bias`` = b · W_U[y] and an unembedding bias
``unembed.bias`` = b_U[y]. Centring is linear, so each component is centred on its own: what
the final LayerNorm centres away, mean(x) · Σ_d (w ⊙ W_U[y])_d / σ(x), is taken from the
components it came from, and the values at a position add up to the model's logit of y
exactly (to float rounding; a model whose components do not add up is refused).

Examples: the first ``logit_attribution.n_examples`` correct ones by example_id. Answer
positions: t = n_prompt - 1 .. n_prompt + n_answer - 2, where the model predicts answer token
k = t - n_prompt + 1 (``answer_index``); ``role`` is the role of the token at t, ``next_role``
that of the token predicted. Attribution to clean minus corrupt answer on the pairs of an EAP
feature: ``circuitflow.pair_logit_attribution``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pyarrow as pa
import torch

from circuitflow import nodes
from circuitflow.ablation.examples import AblationExamples, select_examples
from circuitflow.batching import Batches
from circuitflow.device import resolve_device
from circuitflow.errors import ModelLoadError
from circuitflow.models.loader import load_model
from circuitflow.models.weights import ModelWeights, weights_of
from circuitflow.outputs import save_figure, save_interactive
from circuitflow.stage import Stage
from circuitflow.tables import write_table

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("example_id", pa.int64()), ("position", pa.int64()), ("answer_index", pa.int64()),
    ("role", pa.string()), ("next_role", pa.string()), ("target_id", pa.int64()),
    ("node", pa.string()), ("layer", pa.int32()), ("head", pa.int32()), ("value", pa.float32()),
])
NOTE = (
    "final norm's scale from the clean run, each component centred by itself: "
    "the components add up to the logit"
)
NO_DATA = "no correctly answered example"
FINAL_BIASES = ("final_norm.bias", "unembed.bias")  # added after the norm, not by a writer


class Component(NamedTuple):
    node: str
    layer: int | None
    head: int | None


def components(weights: ModelWeights) -> list[Component]:
    """The writers into the final residual stream, in model order, then the final biases."""
    out = [Component("embed", None, None)]
    if weights.W_pos is not None:
        out.append(Component("pos_embed", None, None))
    for layer, attn in enumerate(weights.attention):
        out += [Component(nodes.head(layer, h), layer, h) for h in range(weights.n_heads)]
        if attn.b_O is not None:
            out.append(Component(f"l{layer}.attn_bias", layer, None))
        out.append(Component(nodes.mlp(layer), layer, None))
    if weights.final_norm.bias is not None:
        out.append(Component(FINAL_BIASES[0], None, None))
    if weights.b_U is not None:
        out.append(Component(FINAL_BIASES[1], None, None))
    return out


def attribute(model, weights: ModelWeights, tokens: torch.Tensor, targets: torch.Tensor,
              against: torch.Tensor | None = None):
    """[components, batch, pos] contributions to the logit of ``targets`` [batch, pos] at every
    position of ``tokens`` [batch, pos], in ``components(weights)`` order; given ``against``
    [batch, pos], to logit(targets) − logit(against), read along W_U[targets] − W_U[against]."""
    layout, final = weights.layout, weights.final_norm
    unembed = weights.W_U[targets]
    unembed_bias = None if weights.b_U is None else weights.b_U[targets]
    if against is not None:
        unembed = unembed - weights.W_U[against]
        if unembed_bias is not None:
            unembed_bias = unembed_bias - weights.b_U[against]
    # centred(c) · D = c · centred(D): centre the reading direction once instead of each c.
    reading = final.centred(unembed * final.weight)
    written: dict[str, torch.Tensor] = {}  # each writer's output · reading, [batch, pos]
    residual = []

    def keep_heads(layer: int):
        def hook(module, args):
            z = args[0].unflatten(-1, (layout.n_heads, layout.d_head))
            per_head = torch.einsum("bthk,hkd,btd->hbt", z, weights.attention[layer].W_O, reading)
            for h in range(layout.n_heads):
                written[nodes.head(layer, h)] = per_head[h]
        return hook

    def keep_mlp(layer: int):
        def hook(module, args, output):
            written[nodes.mlp(layer)] = (output * reading).sum(-1)
        return hook

    def keep_residual(module, args):
        residual.append(args[0])

    final_norm = model.get_submodule(weights.final_norm_path)
    handles = [final_norm.register_forward_pre_hook(keep_residual)]
    for layer in range(layout.n_layers):
        handles.append(model.get_submodule(layout.head_input(layer))
                       .register_forward_pre_hook(keep_heads(layer)))
        handles.append(model.get_submodule(layout.mlp_output(layer))
                       .register_forward_hook(keep_mlp(layer)))
    try:
        with torch.no_grad():
            # The base model ends with the final norm: no logits over the whole vocabulary.
            model.base_model(tokens, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()

    with torch.no_grad():
        written["embed"] = (weights.W_E[tokens] * reading).sum(-1)
        if weights.W_pos is not None:
            written["pos_embed"] = (weights.W_pos[: tokens.shape[1]] * reading).sum(-1)
        for layer, attn in enumerate(weights.attention):
            if attn.b_O is not None:
                written[f"l{layer}.attn_bias"] = reading @ attn.b_O
        writers = [c.node for c in components(weights) if c.node not in FINAL_BIASES]
        raw = torch.stack([written[n] for n in writers])
        _check_complete(raw, (residual[0] * reading).sum(-1))
        values = raw / final.scale(residual[0])[..., 0]
        extra = []
        if final.bias is not None:
            extra.append(unembed @ final.bias)
        if unembed_bias is not None:
            extra.append(unembed_bias)
        return torch.cat([values, torch.stack(extra)]) if extra else values


def _check_complete(parts: torch.Tensor, total: torch.Tensor) -> None:
    """The components must add up to the final residual stream; a model with another writer
    (say, a norm after each block) would otherwise be attributed wrongly without notice."""
    tolerance = 1e-4 * parts.abs().sum(0) + 1e-5
    if ((parts.sum(0) - total).abs() > tolerance).any():
        raise ModelLoadError(
            "the embeddings, heads, attention biases and MLPs do not add up to the final "
            "residual stream of this model: logit attribution knows GPT-2, GPT-Neo and "
            "Llama/Qwen2-style models only"
        )


def attribution_table(model, weights, examples: AblationExamples, rows: list[int]) -> pd.DataFrame:
    """The long table for examples ``rows``: one row per (example, answer position, node)."""
    width = int(examples.lengths[rows].max())
    tokens = examples.tokens[rows, :width]
    targets = torch.cat([tokens[:, 1:], tokens[:, -1:]], dim=1)  # the last column is unused
    values = attribute(model, weights, tokens, targets).float().cpu().numpy()
    parts = components(weights)
    frames = []
    for i, row in enumerate(rows):
        n_prompt, length = int(examples.n_prompt[row]), int(examples.lengths[row])
        positions = np.arange(max(n_prompt - 1, 0), length - 1)
        roles = examples.roles[row]
        frames.append(pd.DataFrame({
            "example_id": int(examples.example_ids[row]),
            "position": np.repeat(positions, len(parts)),
            "answer_index": np.repeat(positions - n_prompt + 1, len(parts)),
            "role": np.repeat([roles[t] for t in positions], len(parts)),
            "next_role": np.repeat([roles[t + 1] for t in positions], len(parts)),
            "target_id": np.repeat(targets[i, positions].cpu().numpy(), len(parts)),
            "node": np.tile([c.node for c in parts], len(positions)),
            "layer": pd.array(np.tile([c.layer for c in parts], len(positions)), "Int32"),
            "head": pd.array(np.tile([c.head for c in parts], len(positions)), "Int32"),
            "value": values[:, i, positions].T.ravel(),
        }))
    return pd.concat(frames, ignore_index=True)


def mean_grid(table: pd.DataFrame, order: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Mean value per node (rows, in ``order``) and answer index (columns), and the column
    labels: the index and the most common role of the token predicted there."""
    grid = table.pivot_table(index="node", columns="answer_index", values="value", aggfunc="mean")
    grid = grid.reindex([n for n in order if n in grid.index])
    roles = table.groupby("answer_index")["next_role"].agg(
        lambda r: Counter(r).most_common(1)[0][0]
    )
    return grid, [f"{k} {roles[k]}" for k in grid.columns]


def mean_figure(table: pd.DataFrame, order: list[str], title: str):
    if table.empty:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, NO_DATA, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        ax.set_title(title)
        return fig
    grid, labels = mean_grid(table, order)
    limit = float(np.nanmax(np.abs(grid.to_numpy()))) or 1.0
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * grid.shape[1] + 3), 0.22 * len(grid) + 2.5))
    image = ax.imshow(grid.to_numpy(), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto",
                      interpolation="nearest")
    ax.set_yticks(range(len(grid)), grid.index, fontsize=6)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_xlabel("answer token predicted (index, most common role)")
    ax.set_ylabel("component")
    ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=ax, label="logit contribution", pad=0.01)
    fig.tight_layout()
    return fig


def examples_page(table: pd.DataFrame, order: list[str], tokenizer, title: str) -> go.Figure:
    """One example at a time (a dropdown picks it): components × its answer positions."""
    if table.empty:
        return go.Figure(layout={"title": f"{title}: {NO_DATA}"})
    views = []
    for example_id, part in table.groupby("example_id", sort=True):
        grid = part.pivot(index="node", columns="position", values="value")
        grid = grid.reindex([n for n in order if n in grid.index])
        targets = part.drop_duplicates("position").set_index("position")["target_id"]
        x = [f"{t} {tokenizer.decode([int(targets[t])])!r}" for t in grid.columns]
        views.append((example_id, grid, x))
    example_id, grid, x = views[0]
    limit = float(np.abs(table["value"]).max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(), x=x, y=list(grid.index), colorscale="RdBu", zmid=0,
        zmin=-limit, zmax=limit, colorbar={"title": "logit"},
        hovertemplate="%{y} at %{x}: %{z:.4g}<extra></extra>",
    ))
    buttons = [
        {"label": f"example {eid}", "method": "update", "args": [
            {"z": [g.to_numpy()], "x": [labels], "y": [list(g.index)]},
            {"title": f"{title}<br>example {eid}"},
        ]}
        for eid, g, labels in views
    ]
    fig.update_layout(
        title=f"{title}<br>example {example_id}", height=max(450, 22 * len(grid) + 200),
        updatemenus=[{"buttons": buttons, "x": 0, "y": 1.12, "xanchor": "left"}],
        xaxis_title="position and the token predicted there", yaxis_title="component",
    )
    fig.update_yaxes(autorange="reversed")
    return fig


def run_stage(params, clean: str, table: str, plot: str, interactive: str) -> None:
    settings = params["logit_attribution"]
    loaded = load_model(params["model"], resolve_device(params["device"]))
    model = loaded.model
    weights = weights_of(model)
    examples = select_examples(clean, settings["n_examples"], loaded.tokenizer.pad_token_id)
    examples = examples.to(model.device)
    log.info("%s: attributing %d examples", loaded.name, len(examples))
    frames = Batches(settings["batch_size"]).map(
        list(range(len(examples))),
        lambda rows: attribution_table(model, weights, examples, list(rows)),
    )
    result = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCHEMA.names)
    write_table(result, table, schema=SCHEMA)
    order = [c.node for c in components(weights)]
    about = f"{params['model']['name']} {params['dataset']}"
    title = (
        f"{about}: direct logit attribution to the reference next token, "
        f"mean over {len(examples)} correct examples\n{NOTE}"
    )
    save_figure(mean_figure(result, order, title), plot, dpi=params["plots"]["dpi"])
    page_title = f"{about}: direct logit attribution<br><sub>{NOTE}</sub>"
    save_interactive(examples_page(result, order, loaded.tokenizer, page_title), interactive)


STAGE = Stage(
    "logit-attribution", run_stage, ("clean",), ("table", "plot", "interactive"),
    reads=(
        "model", "device", "logit_attribution.n_examples",
        "logit_attribution.batch_size", "plots.dpi",
    ),
    job=("dataset",),
)
