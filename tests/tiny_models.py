"""Tiny randomly initialised causal LMs of the architectures circuitflow supports, saved with
``save_pretrained`` so tests load them through the same code path as any checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoConfig,
    LlamaConfig,
    Qwen2Config,
)

from circuitflow.models.tokenizer import train_tokenizer

ARCHITECTURES = ("gpt2", "gpt_neo", "qwen2", "llama")

CORPUS = [
    "### Instruction: show me the price and name from the orders table "
    "### Context: CREATE TABLE orders ( price DECIMAL(10,2), name TEXT, id INTEGER ) "
    "### Response: SELECT price, name FROM orders",
    "### Instruction: From customers get the email sorted by age from highest to lowest "
    "### Context: CREATE TABLE customers ( email VARCHAR(255), age INTEGER ) "
    "### Response: SELECT email FROM customers ORDER BY age DESC",
    "### Instruction: what is the total amount and average score in payments "
    "### Context: CREATE TABLE payments ( amount BIGINT, score DECIMAL(10,2), paid DATE ) "
    "### Response: SELECT SUM(amount) AS SUM_amount, AVG(score) AS AVG_score FROM payments",
]


def tiny_config(arch: str, vocab_size: int, n_layers: int = 2, d_model: int = 64, n_heads: int = 4):
    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "gpt2":
        return GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=n_heads, n_positions=256, **common)
    if arch == "gpt_neo":
        return GPTNeoConfig(
            num_layers=n_layers, hidden_size=d_model, num_heads=n_heads,
            attention_types=[[["global", "local"], n_layers // 2]] if n_layers % 2 == 0
            else [[["global"], n_layers]],
            window_size=256, max_position_embeddings=256, intermediate_size=4 * d_model, **common,
        )
    if arch in ("qwen2", "llama"):
        cls = Qwen2Config if arch == "qwen2" else LlamaConfig
        return cls(
            hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=n_heads // 2,
            max_position_embeddings=256, **common,
        )
    raise ValueError(f"unknown architecture {arch!r}")


def make_tiny_model(
    arch: str, directory: str | Path, extra_tokens: int = 0, seed: int = 0, **config_kwargs
) -> Path:
    """Save a tiny random ``arch`` model and its tokenizer in ``directory``.

    ``extra_tokens`` adds that many special tokens to the tokenizer and embedding rows, like the
    BM1 fine-tunes' added pad token.
    """
    directory = Path(directory)
    tokenizer = train_tokenizer(CORPUS, vocab_size=400)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer), **config_kwargs))
    if extra_tokens:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [f"<|extra_{i}|>" for i in range(extra_tokens)]}
        )
        tokenizer.pad_token = "<|extra_0|>"
        model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
