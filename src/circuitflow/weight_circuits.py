"""Stage weight-circuits: every head's QK and OV circuit, read from the weights alone (seed 003).

With Ẽ the token embeddings and the positional embeddings side by side, head h's QK circuit is
(Ẽ W_Q)(Ẽ W_K)ᵀ · scaling (rows: the query's token or position, columns: the key's), in units of
pre-softmax attention scores, and its OV circuit is W_U (Ẽ W_V W_O)ᵀ (rows: output tokens,
columns: the attended token or position), in logits.

Layer norms as TransformerLens' weight processing handles them: the mean removal and the
weights are folded into the following matrices, the bias into a bias of the queries, keys and
values; the per-token scale 1/σ is a nonlinearity no matrix can hold and is set to 1. Exact
identity (tested): with every norm's scale fixed to 1 and no other path, the score between a
query (token a, position p) and a key (token b, position q) is the sum of the QK entries over
rows {a, p, bias} and columns {b, q, bias}; a head attending only to (b, q) changes the logits
by the OV columns b + q + bias. The ``bias`` row and column (where the model has q/k/v or norm
biases) hold what the biases add; a row's entry in the ``bias`` column is the same for every
key and so leaves the attention pattern unchanged.

Rotary models (Llama, Qwen2) add no positions to the residual stream: their QK circuit is
over tokens, the key ``weight_circuits.rotary_offset`` positions before the query (the score
depends on positions only through that offset), and their OV circuit has no position columns.

Heads after layer 0 read the embeddings only through earlier layers' outputs as well: for them
these are the direct-path circuits, as if the head read the embeddings directly. Masks are not
part of a circuit: GPT-Neo's local layers see only the last ``window_size`` keys.

Axes: every token when the vocabulary has at most ``weight_circuits.max_tokens`` tokens, else
the ``max_tokens`` most frequent token ids of the dataset's clean.parquet; positions 0 up to its
longest prompt + answer, at most ``weight_circuits.max_positions``.

Table: one row per entry: ``node``, ``layer``, ``head``, ``kind`` (qk or ov), ``row_kind`` /
``column_kind`` (token, position or bias), ``row_index`` / ``column_index`` (token id, position,
-1 for the bias), ``row_label`` / ``column_label`` ("tok 5 'x'", "pos 3", "bias"), ``key_offset``
(rotary QK: how many positions the key is before the query; else null) and ``value``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from circuitflow import nodes
from circuitflow.errors import TableError
from circuitflow.models.loader import load_model
from circuitflow.models.weights import ModelWeights, weights_of
from circuitflow.outputs import save_figure, save_interactive
from circuitflow.stage import Stage
from circuitflow.tables import read_table, write_table

log = logging.getLogger(__name__)

CLEAN_COLUMNS = ["prompt_token_ids", "answer_token_ids"]
TOKEN, POSITION, BIAS = "token", "position", "bias"
MAX_TICK_LABELS = 40
LN_NOTE = (
    "layer norms folded in, their per-token scale 1/σ set to 1 (TransformerLens' approximation; "
    "the model divides each token's input by its own σ)"
)


@dataclass
class Axis:
    """The inputs of a circuit, in order: tokens, positions, then the bias (where there is one)."""

    kinds: list[str]
    indices: list[int]  # token id, position, or -1 for the bias
    labels: list[str]

    def __len__(self) -> int:
        return len(self.kinds)

    def blocks(self) -> list[int]:
        """Where one kind of input ends and the next starts."""
        return [i for i in range(1, len(self)) if self.kinds[i] != self.kinds[i - 1]]


def token_label(tokenizer, token_id: int) -> str:
    return f"tok {token_id} {tokenizer.decode([token_id])!r}"


def dataset_axes(clean: pd.DataFrame, vocab_size: int, max_tokens: int, max_positions: int):
    """(token ids, number of positions) the circuits are read over, and a note saying which
    tokens those are when they are the dataset's."""
    sequences = [
        list(p) + list(a) for p, a in zip(clean["prompt_token_ids"], clean["answer_token_ids"])
    ]
    n_positions = min(max(map(len, sequences), default=0), max_positions)
    if vocab_size <= max_tokens:
        return list(range(vocab_size)), n_positions, None
    counts = Counter(int(t) for seq in sequences for t in seq)
    kept = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_tokens]]
    if len(kept) == len(counts):
        return sorted(kept), n_positions, f"the {len(kept)} distinct tokens of the dataset"
    note = f"the dataset's {len(kept)} most frequent of its {len(counts)} distinct tokens"
    return sorted(kept), n_positions, note


def rotate(rotary: torch.nn.Module, x: torch.Tensor, position: int) -> torch.Tensor:
    """Rotary embedding at ``position`` of queries or keys ``x`` [..., d_head], as Llama and
    Qwen2 apply it (rotate_half), with cos and sin from the model's own rotary module."""
    cos, sin = rotary(x, torch.tensor([[position]], device=x.device))
    half = x.shape[-1] // 2
    return x * cos[0, 0] + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin[0, 0]


def layer_circuits(
    weights: ModelWeights, layer: int, inputs: torch.Tensor, out_tokens: list[int],
    rotary_offset: int, with_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """QK [heads, n_in, n_in] and OV [heads, n_out, n_in] of one layer's heads over ``inputs``
    [n, d_model] (embedding rows), plus a last input for the biases if ``with_bias``."""
    attn, final = weights.attention[layer], weights.final_norm
    normed = attn.norm.centred(inputs) * attn.norm.weight
    norm_bias = attn.norm.bias if attn.norm.bias is not None else torch.zeros_like(attn.norm.weight)

    def project(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("nd,hde->hne", normed, w)
        if not with_bias:
            return out
        return torch.cat([out, (norm_bias @ w + b).unsqueeze(1)], dim=1)

    q, k, v = project(attn.W_Q, attn.b_Q), project(attn.W_K, attn.b_K), project(attn.W_V, attn.b_V)
    if weights.rotary is not None:
        q, k = rotate(weights.rotary, q, rotary_offset), rotate(weights.rotary, k, 0)
    qk = attn.scaling * q @ k.transpose(1, 2)
    written = final.centred(torch.einsum("hne,hed->hnd", v, attn.W_O)) * final.weight
    ov = (written @ weights.W_U[out_tokens].T).transpose(1, 2)
    return qk, ov


def circuits(
    weights: ModelWeights, tokenizer, tokens: list[int], n_positions: int, rotary_offset: int,
):
    """(input axis, output axis, {(layer, head, kind): matrix}) for every head."""
    rows = [weights.W_E[tokens]]
    kinds, indices = [TOKEN] * len(tokens), list(tokens)
    labels = [token_label(tokenizer, t) for t in tokens]
    if weights.W_pos is not None:
        rows.append(weights.W_pos[:n_positions])
        kinds += [POSITION] * n_positions
        indices += list(range(n_positions))
        labels += [f"pos {p}" for p in range(n_positions)]
    out_axis = Axis([TOKEN] * len(tokens), list(tokens), labels[: len(tokens)])
    with_bias = any(a.has_bias for a in weights.attention)
    if with_bias:
        kinds, indices, labels = kinds + [BIAS], indices + [-1], labels + ["bias"]
    in_axis = Axis(kinds, indices, labels)
    inputs = torch.cat(rows)
    matrices = {}
    with torch.no_grad():
        for layer in range(weights.layout.n_layers):
            qk, ov = layer_circuits(weights, layer, inputs, tokens, rotary_offset, with_bias)
            for head in range(weights.n_heads):
                matrices[layer, head, "qk"] = qk[head].float().cpu().numpy()
                matrices[layer, head, "ov"] = ov[head].float().cpu().numpy()
    return in_axis, out_axis, matrices


def circuit_table(
    in_axis: Axis, out_axis: Axis, matrices: dict, key_offset: int | None,
) -> pd.DataFrame:
    parts = []
    for (layer, head, kind), matrix in matrices.items():
        rows = in_axis if kind == "qk" else out_axis
        r, c = np.divmod(np.arange(matrix.size), matrix.shape[1])
        parts.append(pd.DataFrame({
            "node": nodes.head(layer, head), "layer": np.int32(layer), "head": np.int32(head),
            "kind": kind,
            "row_kind": np.asarray(rows.kinds)[r], "row_index": np.asarray(rows.indices)[r],
            "row_label": np.asarray(rows.labels)[r],
            "column_kind": np.asarray(in_axis.kinds)[c],
            "column_index": np.asarray(in_axis.indices)[c],
            "column_label": np.asarray(in_axis.labels)[c],
            "key_offset": pd.array([key_offset if kind == "qk" else None] * matrix.size, "Int64"),
            "value": matrix.ravel().astype(np.float32),
        }))
    return pd.concat(parts, ignore_index=True)


def _ticks(labels: list[str]) -> tuple[list[int], list[str]]:
    step = math.ceil(len(labels) / MAX_TICK_LABELS)
    where = list(range(0, len(labels), step))
    return where, [labels[i][:18] for i in where]


def circuit_figure(in_axis: Axis, out_axis: Axis, matrices: dict, kind: str, title: str):
    """One panel per head (layers down, heads across), each on its own symmetric colour scale;
    the axes are labelled on the outer panels only."""
    keys = sorted(k for k in matrices if k[2] == kind)
    n_layers, n_heads = keys[-1][0] + 1, keys[-1][1] + 1
    rows = in_axis if kind == "qk" else out_axis
    width = 4.5
    height = width * min(max(len(rows) / len(in_axis), 0.4), 1.0) + 0.6
    fig, axes = plt.subplots(
        n_layers, n_heads, squeeze=False, figsize=(width * n_heads, height * n_layers + 1.2),
    )
    for (layer, head, _), ax in zip(keys, axes.ravel()):
        matrix = matrices[layer, head, kind]
        limit = float(np.abs(matrix).max()) or 1.0
        image = ax.imshow(matrix, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto",
                          interpolation="nearest")
        for edge in in_axis.blocks():
            ax.axvline(edge - 0.5, color="black", linewidth=0.5)
        for edge in rows.blocks():
            ax.axhline(edge - 0.5, color="black", linewidth=0.5)
        ax.set_title(nodes.head(layer, head), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, pad=0.01).ax.tick_params(labelsize=5)
    for ax in axes[-1]:
        ax.set_xticks(*_ticks(in_axis.labels), rotation=90, fontsize=5)
        ax.set_xlabel("key" if kind == "qk" else "attended input", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_yticks(*_ticks(rows.labels), fontsize=5)
        ax.set_ylabel("query" if kind == "qk" else "output token", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def shown_values(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` as float32 cut to 10 bits of mantissa (3 significant digits, the hover's): the
    zeroed bits make the page compress by a third, which keeps the report small; the table
    holds every digit."""
    return (np.asarray(matrix, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def circuits_page(in_axis: Axis, out_axis: Axis, matrices: dict, title: str) -> go.Figure:
    """QK and OV side by side, one head at a time (a dropdown picks the head)."""
    heads = sorted({(layer, head) for layer, head, _ in matrices})
    fig = make_subplots(rows=1, cols=2, subplot_titles=("QK", "OV"),
                        horizontal_spacing=0.22)  # room for QK's colour bar and OV's token labels
    for i, (layer, head) in enumerate(heads):
        for col, kind in ((1, "qk"), (2, "ov")):
            matrix = matrices[layer, head, kind]
            rows = in_axis if kind == "qk" else out_axis
            hover = ("query %{y}<br>key %{x}" if kind == "qk" else "output %{y}<br>attending %{x}")
            fig.add_trace(go.Heatmap(
                z=shown_values(matrix), x=in_axis.labels, y=rows.labels, colorscale="RdBu", zmid=0,
                visible=i == 0, colorbar={"x": 0.4 if col == 1 else 1.0, "len": 0.9},
                hovertemplate=hover + "<br>%{z:.3g}<extra></extra>",
            ), row=1, col=col)
    buttons = [
        {"label": nodes.head(layer, head), "method": "update", "args": [
            {"visible": [j // 2 == i for j in range(2 * len(heads))]},
            {"title": f"{title}<br>{nodes.head(layer, head)}"},
        ]}
        for i, (layer, head) in enumerate(heads)
    ]
    fig.update_layout(
        title={"text": f"{title}<br>{nodes.head(*heads[0])}", "y": 0.98, "yanchor": "top"},
        height=1000, width=1600, margin={"t": 230, "l": 190},
        # Above the plots, right of the title's lines: the subtitle spans up to five of them.
        updatemenus=[{"buttons": buttons, "x": 1.0, "y": 1.2, "xanchor": "right",
                      "yanchor": "bottom"}],
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="key", row=1, col=1)
    fig.update_yaxes(title_text="query", row=1, col=1)
    fig.update_xaxes(title_text="attended input", row=1, col=2)
    fig.update_yaxes(title_text="output token", row=1, col=2)
    return fig


def notes(
    weights: ModelWeights, rotary_offset: int, token_note: str | None,
) -> dict[str, list[str]]:
    """The lines each figure's title states beside its name: what the values are."""
    common = [LN_NOTE]
    if weights.layout.n_layers > 1:
        common.append("layers after 0: direct path only (embeddings straight into the head)")
    if token_note:
        common.append(f"tokens: {token_note}")
    if weights.rotary is None:
        qk = ["query rows × key columns: token and position embeddings side by side"]
        ov = ["output tokens × attended token and position embeddings"]
    else:
        qk = [(
            "rotary positions: QK by position does not apply; "
            f"tokens × tokens with the key {rotary_offset} position(s) before the query"
        )]
        ov = ["output tokens × attended tokens (rotary model: positions write nothing)"]
    return {"qk": qk + common, "ov": ov + common}


def run_stage(params, clean: str, table: str, qk_plot: str, ov_plot: str, interactive: str) -> None:
    settings = params["weight_circuits"]
    offset = settings["rotary_offset"]
    loaded = load_model(params["model"], "cpu")  # weights only, no forward pass: CPU suffices
    weights = weights_of(loaded.model)
    vocab_size = min(len(loaded.tokenizer), weights.W_E.shape[0], weights.W_U.shape[0])
    tokens, n_positions, token_note = dataset_axes(
        read_table(clean, columns=CLEAN_COLUMNS), vocab_size,
        settings["max_tokens"], settings["max_positions"],
    )
    if not tokens:
        raise TableError(f"{clean}: no examples, so no tokens to read the circuits over")
    log.info("%s: circuits over %d tokens and %d positions", loaded.name, len(tokens), n_positions)
    in_axis, out_axis, matrices = circuits(weights, loaded.tokenizer, tokens, n_positions, offset)
    rotary = weights.rotary is not None
    write_table(circuit_table(in_axis, out_axis, matrices, offset if rotary else None), table)
    about = f"{params['model']['name']} {params['dataset']}"
    lines = notes(weights, offset, token_note)
    dpi = params["plots"]["dpi"]
    for kind, target in (("qk", qk_plot), ("ov", ov_plot)):
        title = "\n".join([f"{about}: {kind.upper()} circuits", *lines[kind]])
        save_figure(circuit_figure(in_axis, out_axis, matrices, kind, title), target, dpi=dpi)
    subtitle = "<br>".join(lines["qk"][:1] + lines["ov"])
    title = f"{about}: QK and OV circuits<br><sub>{subtitle}</sub>"
    save_interactive(circuits_page(in_axis, out_axis, matrices, title), interactive)


STAGE = Stage(
    "weight-circuits", run_stage, ("clean",), ("table", "qk_plot", "ov_plot", "interactive"),
    reads=(
        "model", "weight_circuits.max_tokens", "weight_circuits.max_positions",
        "weight_circuits.rotary_offset", "plots.dpi",
    ),
    job=("dataset",),
)
