"""Direct logit attribution against the model's own logits.

Exact identity (tested at every answer position, on all four architectures): the values of
all nodes at a position add up to the model's logit of the reference next token. The stage
centres each component by itself, so what the final LayerNorm centres away,
mean(x) · Σ_d (w ⊙ W_U[y])_d / σ(x), is removed from the components it came from and leaves
no remainder; the norm's bias is the node ``final_norm.bias``.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.io
import pytest
import torch
from tiny_models import ARCHITECTURES
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitflow.clean import CLEAN_SCHEMA
from circuitflow.errors import ModelLoadError
from circuitflow.logit_attribution import attribute, run_stage
from circuitflow.models.weights import weights_of
from circuitflow.stage import Params
from circuitflow.tables import read_table, write_table

FINAL_NORM = {"gpt2": "transformer.ln_f", "gpt_neo": "transformer.ln_f",
              "qwen2": "model.norm", "llama": "model.norm"}
LAST_MLP = {"gpt2": "transformer.h.1.mlp", "gpt_neo": "transformer.h.1.mlp",
            "qwen2": "model.layers.1.mlp", "llama": "model.layers.1.mlp"}
N_EXAMPLES = 3


def saved_with_random_norms(source: Path, dest: Path):
    """(model, tokenizer) of the tiny model at ``source`` with its norm weights and biases away
    from 1 and 0, so the final norm's handling matters; saved to ``dest``."""
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "ln" in name or "norm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                parameter.copy_(base + 0.3 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return model, tokenizer


def clean_table(vocab_size: int) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    rows = []
    for i, (n_prompt, n_answer, correct) in enumerate(
        [(7, 4, True), (5, 6, False), (9, 3, True), (6, 1, True), (8, 5, True)]
    ):
        ids = rng.integers(1, vocab_size, n_prompt + n_answer).tolist()
        roles = ["instruction"] * (n_prompt - 1) + ["template"] + [
            f"sql_field_{k}" for k in range(n_answer)
        ]
        rows.append({
            "example_id": 40 - i, "correct": correct, "prompt_token_ids": ids[:n_prompt],
            "answer_token_ids": ids[n_prompt:], "n_prompt_tokens": n_prompt,
            "n_answer_tokens": n_answer, "first_wrong_answer_pos": None if correct else 0,
            "predicted_text": "", "token_roles": roles,
        })
    return pd.DataFrame(rows, columns=CLEAN_SCHEMA.names)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def attribution_run(request, tiny_model_dir, tmp_path_factory):
    arch = request.param
    tmp = tmp_path_factory.mktemp(f"dla_{arch}")
    model, tokenizer = saved_with_random_norms(tiny_model_dir(arch), tmp / "model")
    clean = clean_table(len(tokenizer))
    write_table(clean, tmp / "clean.parquet", schema=CLEAN_SCHEMA)
    params = Params("logit-attribution", {
        "model": {"source": "local", "path": str(tmp / "model"), "name": "tiny"},
        "dataset": "toy", "device": "cpu", "plots": {"dpi": 40},
        "logit_attribution": {"n_examples": N_EXAMPLES, "batch_size": 2},
    })
    out = {"table": tmp / "dla.parquet", "plot": tmp / "dla.png", "interactive": tmp / "dla.plotly.json"}
    run_stage(params, clean=str(tmp / "clean.parquet"), **{k: str(v) for k, v in out.items()})
    return arch, model, clean, read_table(out["table"]), out


def selected(clean: pd.DataFrame) -> pd.DataFrame:
    """The examples the stage should use: the first N_EXAMPLES correct ones by example_id."""
    return clean[clean["correct"]].sort_values("example_id").head(N_EXAMPLES)


def test_components_add_up_to_the_logit_at_every_answer_position(attribution_run):
    _, model, clean, table, _ = attribution_run
    examples = selected(clean)
    assert sorted(table["example_id"].unique()) == sorted(examples["example_id"])
    for example in examples.itertuples():
        ids = list(example.prompt_token_ids) + list(example.answer_token_ids)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        part = table[table["example_id"] == example.example_id]
        n_prompt = example.n_prompt_tokens
        assert sorted(part["position"].unique()) == list(range(n_prompt - 1, len(ids) - 1))
        for position, at in part.groupby("position"):
            target = ids[position + 1]
            assert set(at["target_id"]) == {target}
            assert set(at["answer_index"]) == {position - n_prompt + 1}
            assert set(at["role"]) == {example.token_roles[position]}
            assert set(at["next_role"]) == {example.token_roles[position + 1]}
            expected = float(logits[position, target])
            assert at["value"].sum() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_node_names_per_architecture(attribution_run):
    arch, _, _, table, _ = attribution_run
    names = set(table["node"])
    heads = {f"l{l}.h{h}" for l in range(2) for h in range(4)}
    assert heads | {"embed", "l0.mlp", "l1.mlp"} <= names
    absolute = arch in ("gpt2", "gpt_neo")
    assert ("pos_embed" in names) == absolute  # rotary models add no positions
    assert ({"l0.attn_bias", "final_norm.bias"} <= names) == absolute  # Llama, Qwen2: none
    mlp = table[table["node"] == "l1.mlp"]
    assert mlp["layer"].eq(1).all() and mlp["head"].isna().all()


def test_last_mlp_value_is_its_logit_effect_with_the_final_scale_frozen(attribution_run):
    """Independent of the sum: removing the last MLP's output changes only the final norm's
    input, so with the norm's scale held at the clean run's its logit change is its value."""
    arch, model, clean, table, _ = attribution_run
    example = selected(clean).iloc[0]
    ids = list(example["prompt_token_ids"]) + list(example["answer_token_ids"])
    tokens = torch.tensor([ids])
    norm = model.get_submodule(FINAL_NORM[arch])
    layer_norm = isinstance(norm, torch.nn.LayerNorm)
    eps = norm.eps if layer_norm else norm.variance_epsilon
    scales = []

    def frozen(module, args, output):
        x = args[0]
        centred = x - x.mean(-1, keepdim=True) if layer_norm else x
        if not scales:
            scales.append((centred.pow(2).mean(-1, keepdim=True) + eps).sqrt())
        out = centred / scales[0] * module.weight
        return out + module.bias if layer_norm else out

    handles = [norm.register_forward_hook(frozen)]
    try:
        with torch.no_grad():
            clean_logits = model(tokens).logits[0]
            handles.append(model.get_submodule(LAST_MLP[arch]).register_forward_hook(
                lambda module, args, output: torch.zeros_like(output)
            ))
            without = model(tokens).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    rows = table[(table["example_id"] == example["example_id"]) & (table["node"] == "l1.mlp")]
    for row in rows.itertuples():
        at = (row.position, row.target_id)
        effect = float(clean_logits[at] - without[at])
        assert row.value == pytest.approx(effect, rel=1e-4, abs=1e-5)
    assert rows["value"].abs().max() > 1e-3


def test_outputs(attribution_run):
    _, _, clean, _, out = attribution_run
    assert out["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = plotly.io.read_json(out["interactive"])
    menu = [button.label for button in page.layout.updatemenus[0].buttons]
    assert menu == [f"example {example_id}" for example_id in selected(clean)["example_id"]]


def test_a_model_whose_components_do_not_add_up_is_refused(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2")).eval()
    # Another writer into the residual stream, unknown to the attribution (not a constant
    # vector: the final LayerNorm would centre that away).
    extra = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(0))
    model.transformer.ln_f.register_forward_pre_hook(lambda module, args: (args[0] + extra,))
    tokens = torch.tensor([[5, 6, 7, 8]])
    with pytest.raises(ModelLoadError, match="do not add up"):
        attribute(model, weights_of(model), tokens, tokens)
