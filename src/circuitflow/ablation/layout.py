"""Where the nodes an ablation changes live in a Hugging Face causal LM.

A head's output is its d_head slice of the input of the attention output projection (the
per-head ``z``, before the heads are mixed); an MLP's output is the MLP module's output; a
block's output is the residual stream after the block.
"""

from __future__ import annotations

from dataclasses import dataclass

from circuitflow.errors import ModelLoadError

# (decoder blocks, attention output projection within a block, MLP within a block)
KNOWN_LAYOUTS = (
    ("transformer.h", "attn.c_proj", "mlp"),  # GPT-2
    ("transformer.h", "attn.attention.out_proj", "mlp"),  # GPT-Neo
    ("model.layers", "self_attn.o_proj", "mlp"),  # Qwen2, Llama and their relatives
)


@dataclass(frozen=True)
class Layout:
    blocks: str
    attn_out: str
    mlp: str
    n_layers: int
    n_heads: int
    d_head: int

    def block(self, layer: int) -> str:
        return f"{self.blocks}.{layer}"

    def head_input(self, layer: int) -> str:
        """The module whose input holds the heads' outputs side by side."""
        return f"{self.blocks}.{layer}.{self.attn_out}"

    def mlp_output(self, layer: int) -> str:
        return f"{self.blocks}.{layer}.{self.mlp}"


def _has(model, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def layout_of(model) -> Layout:
    """The module layout of ``model``, or a ModelLoadError naming its unsupported type."""
    for blocks, attn_out, mlp in KNOWN_LAYOUTS:
        if _has(model, f"{blocks}.0.{attn_out}") and _has(model, f"{blocks}.0.{mlp}"):
            config = model.config
            n_heads = config.num_attention_heads
            d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
            n_layers = len(model.get_submodule(blocks))
            return Layout(blocks, attn_out, mlp, n_layers, n_heads, d_head)
    raise ModelLoadError(
        f"model type {model.config.model_type!r}: ablation knows the module layouts of GPT-2, "
        "GPT-Neo and Qwen2/Llama-style models only (blocks with an attention output projection "
        "and an MLP)"
    )
