"""Weight circuits against the model itself: QK entries are pre-softmax attention scores, OV
columns are the logit change of attending to one token and position.

The test model is attention-only with layer 0 writing nothing (its output projection and every
MLP zeroed), so every head reads the embeddings directly and its direct-path circuits are
exact. Exact identity the stage's layer-norm handling makes true, and that is tested here:
with every norm's per-token scale fixed to 1 (norm(x) = centred(x) * w + b for LayerNorm,
x * w for RMSNorm, as hooks below impose on the model), the score of a query (token a,
position p) for a key (token b, position q) is the sum of the QK entries over rows
{tok a, pos p, bias} and columns {tok b, pos q, bias} (rotary models: {tok a, bias} x
{tok b, bias}, key at the stated offset before the query), and a head attending only to key q
changes the logits by the OV columns tok b + pos q + bias.
"""

from unittest import mock

import numpy as np
import pandas as pd
import plotly.io
import pytest
import torch
from tiny_models import ARCHITECTURES, tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitflow.clean import CLEAN_SCHEMA
from circuitflow.stage import Params
from circuitflow.tables import read_table, write_table
from circuitflow.weight_circuits import dataset_axes, run_stage, shown_values

OUTPUT_PROJECTION = {
    "gpt2": "transformer.h.{}.attn.c_proj",
    "gpt_neo": "transformer.h.{}.attn.attention.out_proj",
    "qwen2": "model.layers.{}.self_attn.o_proj",
    "llama": "model.layers.{}.self_attn.o_proj",
}
ROTARY = {"qwen2", "llama"}
N_HEADS, D_HEAD, OFFSET = 4, 16, 2  # tiny_config: d_model 64, 2 key/value heads (grouped)
SEQUENCE_LENGTH = 9


def attention_only_model(arch: str, tokenizer_dir, directory):
    """A 2-layer model with large random weights (norm weights and biases too), no MLP, and
    nothing written by layer 0's attention."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_config(arch, len(tokenizer), n_heads=N_HEADS)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
            if ".mlp." in name or name.startswith(OUTPUT_PROJECTION[arch].format(0)):
                parameter.zero_()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model.eval()


def fix_norm_scales(model):
    """Hooks making every norm's per-token scale 1 (written here, independent of the stage)."""
    def unit_scale(module, args, output):
        x = args[0]
        if isinstance(module, torch.nn.LayerNorm):
            return (x - x.mean(-1, keepdim=True)) * module.weight + module.bias
        return x * module.weight

    return [
        m.register_forward_hook(unit_scale) for m in model.modules()
        if isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")
    ]


def clean_table(tokens: list[int]) -> pd.DataFrame:
    rows = []
    for i in range(3):
        prompt, answer = tokens[i : i + 6], tokens[i + 6 : i + SEQUENCE_LENGTH]
        rows.append({
            "example_id": i, "correct": True, "prompt_token_ids": prompt,
            "answer_token_ids": answer, "n_prompt_tokens": len(prompt),
            "n_answer_tokens": len(answer), "first_wrong_answer_pos": None,
            "predicted_text": "", "token_roles": ["instruction"] * SEQUENCE_LENGTH,
        })
    return pd.DataFrame(rows, columns=CLEAN_SCHEMA.names)


class Matrix:
    """One head's circuit from the table, addressed by (kind, index) of its rows and columns."""

    def __init__(self, part: pd.DataFrame):
        grid = part.pivot(index=["row_kind", "row_index"], columns=["column_kind", "column_index"],
                          values="value")
        self.values = grid.to_numpy()
        self.rows = {key: i for i, key in enumerate(grid.index)}
        self.columns = {key: i for i, key in enumerate(grid.columns)}

    def at(self, rows: list[tuple], columns: list[tuple]) -> np.ndarray:
        return self.values[np.ix_([self.rows[r] for r in rows], [self.columns[c] for c in columns])]


def matrices(table: pd.DataFrame, kind: str) -> dict[tuple[int, int], Matrix]:
    part = table[table["kind"] == kind]
    return {key: Matrix(group) for key, group in part.groupby(["layer", "head"])}


def inputs_of(token: int, position: int, rotary: bool) -> list[tuple]:
    return [("token", token)] + ([] if rotary else [("position", position)])


def with_bias(inputs: list[tuple], axis: dict) -> list[tuple]:
    return inputs + ([("bias", -1)] if ("bias", -1) in axis else [])


def qk_prediction(matrix: Matrix, query: list[tuple], key: list[tuple]) -> float:
    return float(matrix.at(with_bias(query, matrix.rows), with_bias(key, matrix.columns)).sum())


def ov_prediction(matrix: Matrix, attended: list[tuple]) -> np.ndarray:
    """Per output token (the matrix's rows), the sum of the attended inputs' columns."""
    return matrix.at(list(matrix.rows), with_bias(attended, matrix.columns)).sum(axis=1)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def circuits_run(request, tiny_model_dir, tmp_path_factory):
    arch = request.param
    tmp = tmp_path_factory.mktemp(f"circuits_{arch}")
    model = attention_only_model(arch, tiny_model_dir(arch), tmp / "model")
    tokens = list(range(20, 32))
    sequence = torch.tensor([tokens[:SEQUENCE_LENGTH]])
    write_table(clean_table(tokens), tmp / "clean.parquet", schema=CLEAN_SCHEMA)
    params = Params("weight-circuits", {
        "model": {"source": "local", "path": str(tmp / "model"), "name": "tiny"},
        "dataset": "toy", "plots": {"dpi": 40},
        "weight_circuits": {"max_tokens": 64, "max_positions": 256, "rotary_offset": OFFSET},
    })
    out = {
        "table": tmp / "weight_circuits.parquet", "qk_plot": tmp / "qk.png",
        "ov_plot": tmp / "ov.png", "interactive": tmp / "weight_circuits.plotly.json",
    }
    run_stage(params, clean=str(tmp / "clean.parquet"), **{k: str(v) for k, v in out.items()})
    return arch, model, sequence, read_table(out["table"]), out


def recorded_scores(model, sequence):
    """The input of every softmax the forward pass calls: each layer's pre-softmax scores."""
    seen, softmax = [], torch.nn.functional.softmax

    def recording(x, *args, **kwargs):
        seen.append(x.detach().clone())
        return softmax(x, *args, **kwargs)

    with mock.patch.object(torch.nn.functional, "softmax", recording), torch.no_grad():
        model(sequence)
    return seen


def test_qk_entries_are_the_pre_softmax_scores(circuits_run):
    arch, model, sequence, table, _ = circuits_run
    rotary = arch in ROTARY
    handles = fix_norm_scales(model)
    try:
        scores = recorded_scores(model, sequence)
    finally:
        for h in handles:
            h.remove()
    qk = matrices(table, "qk")
    assert len(scores) == 2 and sorted(qk) == [(l, h) for l in range(2) for h in range(N_HEADS)]
    ids = sequence[0].tolist()
    checked = 0
    for (layer, head), matrix in qk.items():
        for p in range(len(ids)):
            for q in range(p + 1):
                if rotary and p - q != OFFSET:
                    continue
                expected = float(scores[layer][0, head, p, q])
                query, key = inputs_of(ids[p], p, rotary), inputs_of(ids[q], q, rotary)
                got = qk_prediction(matrix, query, key)
                assert got == pytest.approx(expected, rel=1e-4, abs=1e-4), (layer, head, p, q)
                checked += 1
    assert checked >= 2 * N_HEADS * (len(ids) - OFFSET)
    if rotary:
        assert set(table.loc[table["kind"] == "qk", "key_offset"]) == {OFFSET}
        assert "position" not in set(table["column_kind"])


def head_removed(projection, head: int, position: int):
    """A pre-hook on the output projection zeroing one head's z at one position."""
    def hook(module, args):
        z = args[0].clone()
        z[:, position, head * D_HEAD : (head + 1) * D_HEAD] = 0
        return (z,)
    return projection.register_forward_pre_hook(hook)


def attending_only(layer: int, head: int, query: int, key: int):
    """Patch the softmax so that ``head`` of ``layer`` attends at ``query`` to ``key`` alone."""
    calls, softmax = [], torch.nn.functional.softmax

    def forced(x, *args, **kwargs):
        out = softmax(x, *args, **kwargs)
        calls.append(None)
        if len(calls) == layer + 1:  # one softmax call per layer, in order
            out[:, head, query] = 0
            out[:, head, query, key] = 1
        return out

    return mock.patch.object(torch.nn.functional, "softmax", forced)


def test_ov_columns_are_the_logit_change_of_attending_to_one_input(circuits_run):
    arch, model, sequence, table, _ = circuits_run
    rotary = arch in ROTARY
    layer, p = 1, sequence.shape[1] - 1
    projection = model.get_submodule(OUTPUT_PROJECTION[arch].format(layer))
    ov = matrices(table, "ov")
    ids = sequence[0].tolist()
    out_tokens = [i for _, i in ov[layer, 0].rows]
    handles = fix_norm_scales(model)
    try:
        for head in range(N_HEADS):
            removed = head_removed(projection, head, p)
            with torch.no_grad():
                without = model(sequence).logits[0, p, out_tokens]
            removed.remove()
            for q in (0, 4, p):
                with attending_only(layer, head, p, q), torch.no_grad():
                    attending = model(sequence).logits[0, p, out_tokens]
                change = (attending - without).numpy()
                predicted = ov_prediction(ov[layer, head], inputs_of(ids[q], q, rotary))
                scale = np.abs(change).max()
                assert scale > 1e-3
                np.testing.assert_allclose(predicted, change, rtol=1e-4, atol=1e-5 * scale)
    finally:
        for h in handles:
            h.remove()


def test_outputs_are_labelled(circuits_run):
    arch, _, _, table, out = circuits_run
    assert set(table["kind"]) == {"qk", "ov"}
    assert set(table["node"]) == {f"l{l}.h{h}" for l in range(2) for h in range(N_HEADS)}
    tokens = table.loc[table["row_kind"] == "token", "row_index"]
    # The dataset's tokens (three examples, shifted by one), not the vocabulary.
    assert set(tokens) == set(range(20, 22 + SEQUENCE_LENGTH))
    labels = set(table["column_label"])
    assert any(label.startswith("tok 20 '") for label in labels)
    if arch not in ROTARY:
        assert {f"pos {j}" for j in range(SEQUENCE_LENGTH)} <= labels
        assert set(table.loc[table["column_kind"] == "position", "column_index"]) == set(
            range(SEQUENCE_LENGTH)
        )
    for name in ("qk_plot", "ov_plot"):
        assert out[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = out["interactive"].read_text()
    assert plotly.io.read_json(out["interactive"]).data
    if arch in ROTARY:
        assert "QK by position does not apply" in page


def test_axes_cut_a_large_vocabulary_to_the_dataset():
    clean = pd.DataFrame({
        "prompt_token_ids": [[5, 5, 7, 9], [7, 5]], "answer_token_ids": [[9, 11], [3]],
    })
    assert dataset_axes(clean, vocab_size=12, max_tokens=12, max_positions=100)[:2] == (
        list(range(12)), 6,
    )
    tokens, n_positions, note = dataset_axes(clean, vocab_size=100, max_tokens=3, max_positions=4)
    assert tokens == [5, 7, 9] and n_positions == 4  # counts 3, 2, 2; ties to the lower id
    assert "3 most frequent of its 5" in note


def test_the_page_shows_three_significant_digits_of_every_value():
    rng = np.random.default_rng(0)
    matrix = (rng.normal(size=(6, 9)) * 10.0 ** rng.integers(-4, 4, size=(6, 9))).astype(np.float32)
    shown = shown_values(matrix)
    assert shown.dtype == np.float32
    # Cut toward zero by less than 2^-10 of each value: three significant digits stay right.
    assert np.all(np.abs(matrix - shown) < np.abs(matrix) * 2.0**-10)
    assert np.all(np.sign(shown) == np.sign(matrix)) and np.all(np.abs(shown) <= np.abs(matrix))
    assert np.all(shown.view(np.uint32) & 0x1FFF == 0)
