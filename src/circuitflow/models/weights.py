"""A causal LM's weights in one layout, whatever its architecture: embeddings, per-head
attention matrices, layer norms and unembedding, as TransformerLens names them.

Shapes: ``W_E`` [vocab, d_model], ``W_pos`` [positions, d_model] (None for rotary models),
``W_Q``/``W_K``/``W_V`` [heads, d_model, d_head] (a head's query is ``x @ W_Q[h] + b_Q[h]``),
``W_O`` [heads, d_head, d_model], ``W_U`` [vocab, d_model] (one row per output token). Grouped
key/value heads are repeated for the query heads that share them, as the model's ``repeat_kv``
does. Read from the Hugging Face modules of GPT-2 (fused ``c_attn``, Conv1D), GPT-Neo and
Llama/Qwen2 (``q_proj``/``k_proj``/``v_proj``); module paths come from ``ablation.layout``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitflow.ablation.layout import Layout, layout_of
from circuitflow.errors import ModelLoadError


@dataclass
class Norm:
    """LayerNorm (``centre``: the mean over d_model is removed first) or RMSNorm."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float
    centre: bool

    def centred(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True) if self.centre else x

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The per-token divisor [..., 1] the norm applies to its (centred) input ``x``."""
        return (self.centred(x).pow(2).mean(-1, keepdim=True) + self.eps).sqrt()


@dataclass
class Attention:
    norm: Norm  # the norm in front of the attention
    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    b_Q: torch.Tensor  # [heads, d_head], zeros where the model has no bias
    b_K: torch.Tensor
    b_V: torch.Tensor
    b_O: torch.Tensor | None  # [d_model]
    has_bias: bool  # queries, keys and values get a bias: their own, or the norm's folded in
    scaling: float  # multiplies q·k before the softmax


@dataclass
class ModelWeights:
    layout: Layout
    W_E: torch.Tensor
    W_pos: torch.Tensor | None
    attention: list[Attention]
    final_norm: Norm
    final_norm_path: str
    W_U: torch.Tensor
    b_U: torch.Tensor | None
    rotary: torch.nn.Module | None  # the model's rotary embedding (cos, sin) = rotary(x, pos)

    @property
    def n_heads(self) -> int:
        return self.layout.n_heads


def _module(model, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _first(model, *paths: str) -> str:
    """The first of ``paths`` that names a module of ``model``."""
    for path in paths:
        if _module(model, path) is not None:
            return path
    raise ModelLoadError(
        f"model type {model.config.model_type!r}: none of {', '.join(paths)} found; weight "
        "analyses know GPT-2, GPT-Neo and Llama/Qwen2-style models only"
    )


def norm_of(module) -> Norm:
    if isinstance(module, torch.nn.LayerNorm):
        return Norm(module.weight.detach(), module.bias.detach(), module.eps, centre=True)
    if hasattr(module, "variance_epsilon"):  # LlamaRMSNorm, Qwen2RMSNorm
        return Norm(module.weight.detach(), None, module.variance_epsilon, centre=False)
    raise ModelLoadError(f"unknown normalisation module {type(module).__name__}")


def _heads(weight_in_out: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[d_model, heads * d_head] (x @ W form) -> [heads, d_model, d_head]."""
    d_model = weight_in_out.shape[0]
    return weight_in_out.reshape(d_model, n_heads, -1).permute(1, 0, 2)


def _head_bias(bias: torch.Tensor | None, n_heads: int, d_head: int, like: torch.Tensor):
    if bias is None:
        return torch.zeros(n_heads, d_head, dtype=like.dtype, device=like.device)
    return bias.detach().reshape(n_heads, d_head)


def _attention(model, layout: Layout, layer: int) -> Attention:
    block = layout.block(layer)
    out_path = layout.head_input(layer)
    attn = model.get_submodule(out_path.rsplit(".", 1)[0])
    out = model.get_submodule(out_path)
    n_heads, d_head = layout.n_heads, layout.d_head
    norm = norm_of(model.get_submodule(_first(model, f"{block}.ln_1", f"{block}.input_layernorm")))
    if hasattr(attn, "c_attn"):  # GPT-2: one Conv1D (x @ W) for q, k and v side by side
        weights = attn.c_attn.weight.detach().chunk(3, dim=1)
        biases = attn.c_attn.bias.detach().chunk(3)
        w_q, w_k, w_v = (_heads(w, n_heads) for w in weights)
        b_q, b_k, b_v = (_head_bias(b, n_heads, d_head, w_q) for b in biases)
        w_o = out.weight.detach().reshape(n_heads, d_head, -1)
        has_bias = True
    else:  # nn.Linear projections (x @ W.T), keys and values possibly grouped
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        w_q, w_k, w_v = (_heads(p.weight.detach().T, p.out_features // d_head) for p in projections)
        b_q, b_k, b_v = (
            _head_bias(p.bias, p.out_features // d_head, d_head, w_q) for p in projections
        )
        group = n_heads // w_k.shape[0]
        w_k, w_v, b_k, b_v = (t.repeat_interleave(group, dim=0) for t in (w_k, w_v, b_k, b_v))
        w_o = out.weight.detach().T.reshape(n_heads, d_head, -1)
        has_bias = attn.q_proj.bias is not None
    return Attention(
        norm=norm, W_Q=w_q, W_K=w_k, W_V=w_v, W_O=w_o, b_Q=b_q, b_K=b_k, b_V=b_v,
        b_O=None if out.bias is None else out.bias.detach(),
        has_bias=has_bias or norm.bias is not None,
        # GPT-Neo does not scale its scores (and its attention has no `scaling`).
        scaling=float(getattr(attn, "scaling", 1.0)),
    )


def weights_of(model) -> ModelWeights:
    layout = layout_of(model)
    wpe = _module(model, "transformer.wpe")
    unembed = model.get_output_embeddings()
    final_norm = _first(model, "transformer.ln_f", "model.norm")
    rotary = _module(model, "model.rotary_emb") if wpe is None else None
    if wpe is None and rotary is None:
        raise ModelLoadError(
            f"model type {model.config.model_type!r}: neither positional embeddings "
            "(transformer.wpe) nor a rotary embedding (model.rotary_emb) found"
        )
    return ModelWeights(
        layout=layout,
        W_E=model.get_input_embeddings().weight.detach(),
        W_pos=None if wpe is None else wpe.weight.detach(),
        attention=[_attention(model, layout, layer) for layer in range(layout.n_layers)],
        final_norm=norm_of(model.get_submodule(final_norm)),
        final_norm_path=final_norm,
        W_U=unembed.weight.detach(),
        b_U=None if unembed.bias is None else unembed.bias.detach(),
        rotary=rotary,
    )
