"""The EAP graph on a TransformerLens ``TransformerBridge``: one forward pass that records every
upstream node's output, patches edges, and hands back each receiver's input gradient.

Where the graph lives in the bridge (hook names as in TransformerLens 4.3, compatibility mode):
- ``input``: ``blocks.0.hook_resid_pre`` (token plus position embeddings);
- head outputs: ``attn.hook_result`` (per head), MLP outputs: ``hook_mlp_out``;
- q/k/v receivers: the per-head residual copies ``attn.hook_q_input|k_input|v_input``;
- MLP receivers: ``ln2.hook_in``, which feeds only the MLP. Not ``hook_mlp_in``: in 4.3 that
  one acts as the residual stream itself, so its gradient includes the skip connection;
- the logits receiver: the last block's ``hook_resid_post``, read only by the final norm.

TransformerLens 4.3 has no per-head hooks for some attention classes (GPT-Neo). There the
bridge is run without them and ``_EmulatedHeads`` rebuilds what they would give: each head's
output is ``z_h @ W_O[h]``, and each head's query (key, value) is recomputed at ``attn.hook_q``
(``hook_k``, ``hook_v``) from its own copy of the block input, ``norm(x_h) @ W_Q[h] + b_Q[h]``.
Patching or differentiating that copy is exactly patching or differentiating the head's input.
"""

from __future__ import annotations

from typing import Callable

import torch
from transformer_lens.model_bridge import TransformerBridge

from circuitflow.eap.graph import Graph

GradHook = Callable[[slice, torch.Tensor], None]


class EdgeModel:
    """A causal LM seen as the EAP graph. Its weights are frozen: EAP differentiates activations
    only, and weight gradients would double the cost of every backward pass."""

    def __init__(self, hf_model, tokenizer, use_split_hooks: bool = True):
        hf_model.requires_grad_(False)
        self.bridge = TransformerBridge.boot_transformers(
            hf_model.config.name_or_path or hf_model.config.model_type,
            hf_model=hf_model, tokenizer=tokenizer, device=hf_model.device,
        )
        self.bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
        cfg = self.bridge.cfg
        n_kv_heads = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        self.graph = Graph(cfg.n_layers, cfg.n_heads, n_kv_heads)
        split = use_split_hooks and self._split_hooks()
        self.emulated = None if split else _EmulatedHeads(self.bridge)

    def _split_hooks(self) -> bool:
        try:
            self.bridge.set_use_attn_result(True)
            self.bridge.set_use_split_qkv_input(True)
        except NotImplementedError:
            self.bridge.set_use_attn_result(False)
            return False
        return True

    def upstream_buffer(self, tokens: torch.Tensor) -> torch.Tensor:
        """An empty [n_upstream, batch, pos, d_model] buffer for ``run(record=...)``."""
        dtype = next(self.bridge.parameters()).dtype
        shape = (len(self.graph.upstream), *tokens.shape, self.bridge.cfg.d_model)
        return torch.zeros(shape, dtype=dtype, device=tokens.device)

    def run(
        self,
        tokens: torch.Tensor,
        last: torch.Tensor,
        record: torch.Tensor | None = None,
        patch: tuple[torch.Tensor, torch.Tensor] | None = None,
        input_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_grad: GradHook | None = None,
    ) -> torch.Tensor:
        """One forward pass over ``tokens`` [batch, pos]; returns the logits [batch, vocab] at
        each row's position ``last`` [batch].

        - ``record``: an [n_upstream, batch, pos, d_model] buffer, filled with this pass's
          upstream outputs in ``graph.upstream`` order (upstream-major, so that the upstream
          nodes feeding a receiver are one contiguous block).
        - ``patch=(corrupt, weights)``: ``corrupt`` like ``record`` from the corrupt input,
          ``weights`` [n_upstream, n_receivers]. Each receiver r reads its usual input minus
          Σ_u weights[u, r] · (a_u(this pass) − a_u(corrupt)): weight 1 patches an edge to its
          corrupt value exactly, 0 leaves it. Needs ``record``.
        - ``input_fn``: maps the embeddings to those this pass uses (EAP-IG interpolation).
        - ``on_grad(receivers, grad)``: called in the backward pass with the gradient
          [batch, pos, n, d_model] of the inputs of a group of receivers (columns ``receivers``).
        """
        g = self.graph

        def receive(x: torch.Tensor, cols: slice) -> torch.Tensor:
            if patch is not None:
                corrupt, weights = patch
                n = int(g.n_upstream_before[cols.start])
                w = weights[:n, cols].T.to(x.dtype)
                # Two products, not one of (record − corrupt): no [n, batch·pos·d] temporary.
                shift = w @ record[:n].flatten(1) - w @ corrupt[:n].flatten(1)
                x = x - shift.view(-1, *x.shape[:2], x.shape[-1]).permute(1, 2, 0, 3)
            if on_grad is not None:
                # A tensor of its own (a view, no copy), so its gradient is that of this
                # receiver's input alone, not of the residual stream it was read from.
                x = x.view_as(x)
                x.register_hook(lambda grad: on_grad(cols, grad))
            return x

        def one_receiver(col: int):
            def hook(x, hook):
                return receive(x.unsqueeze(2), slice(col, col + 1)).squeeze(2)
            return hook

        def qkv_receivers(cols: slice):
            return lambda x, hook: receive(x, cols)

        def store(index, transform=None):
            def hook(x, hook):
                value = (transform(x) if transform else x).detach()
                record[index] = value.permute(2, 0, 1, 3) if value.dim() == 4 else value
                return x
            return hook

        def input_hook(x, hook):
            if input_fn is not None:
                x = input_fn(x)
            if on_grad is not None:
                # Weights are frozen: the graph for the backward pass starts at the embeddings.
                x = x.detach().requires_grad_(True)
            if record is not None:
                record[0] = x.detach()
            return x

        hooks = [("blocks.0.hook_resid_pre", input_hook)]
        receiving = patch is not None or on_grad is not None
        block_inputs = {}  # per layer, for the emulated per-head q/k/v inputs
        for layer in range(g.n_layers):
            block = f"blocks.{layer}"
            heads = slice(g.head(layer), g.head(layer) + g.n_heads)
            if record is not None:
                if self.emulated is None:
                    hooks.append((f"{block}.attn.hook_result", store(heads)))
                else:
                    per_head = self.emulated.outputs(layer)
                    hooks.append((f"{block}.attn.hook_z", store(heads, per_head)))
                hooks.append((f"{block}.hook_mlp_out", store(g.mlp(layer))))
            if receiving:
                for kind in ("q", "k", "v"):
                    cols = g.qkv_receivers(layer, kind)
                    if self.emulated is None:
                        hooks.append((f"{block}.attn.hook_{kind}_input", qkv_receivers(cols)))
                    else:
                        hooks += self.emulated.receiver_hooks(
                            layer, kind, lambda x, c=cols: receive(x, c), block_inputs
                        )
                hooks.append((f"{block}.ln2.hook_in", one_receiver(g.mlp_receiver(layer))))
        if receiving:
            final_residual = f"blocks.{g.n_layers - 1}.hook_resid_post"
            hooks.append((final_residual, one_receiver(g.logits_receiver)))
        # The LM head only at the positions read: over every position it is ~35% of a pass.
        kept = torch.unique(last)
        with self.bridge.hooks(fwd_hooks=hooks):
            logits = self.bridge(tokens, logits_to_keep=kept)
        return logits[torch.arange(len(last), device=logits.device), torch.searchsorted(kept, last)]


class _EmulatedHeads:
    """Per-head outputs and per-head q/k/v inputs for attention the bridge cannot split."""

    def __init__(self, bridge: TransformerBridge):
        self.blocks = bridge.blocks
        # TransformerLens layout: W_Q [head, d_model, d_head], W_O [head, d_head, d_model].
        names = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")
        self.weights = [{name: getattr(block.attn, name) for name in names} for block in bridge.blocks]

    def outputs(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        w_o = self.weights[layer]["W_O"]
        return lambda z: torch.einsum("bpnh,nhd->bpnd", z, w_o)

    def receiver_hooks(self, layer: int, kind: str, receive: Callable, block_inputs: dict):
        """Hooks that recompute ``kind`` (q, k or v) per head from a private copy of the block
        input passed through ``receive``; ``block_inputs`` keeps the block input meanwhile."""
        w = self.weights[layer][f"W_{kind.upper()}"]
        b = self.weights[layer][f"b_{kind.upper()}"]
        norm = self.blocks[layer].ln1.original_component

        def keep_input(x, hook):
            block_inputs[layer] = x
            return x

        def recompute(projected, hook):
            x = block_inputs[layer]
            copies = receive(x.unsqueeze(2).expand(-1, -1, w.shape[0], -1))
            out = torch.einsum("bpnd,ndh->bpnh", norm(copies), w)
            return out if b is None else out + b

        hooks = [(f"blocks.{layer}.attn.hook_{kind}", recompute)]
        return ([(f"blocks.{layer}.ln1.hook_in", keep_input)] if kind == "q" else []) + hooks
