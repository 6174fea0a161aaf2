"""Direct logit attribution to clean − corrupt answer against the model's own logits.

Exact identity (tested per pair, on GPT-2 and a rotary model): the values of all components of
a pair add up to logit(clean answer) − logit(corrupt answer) at the last clean position, from
the plain Hugging Face forward pass of that one prompt, unpadded.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from test_logit_attribution import saved_with_random_norms

from circuitflow.eap.pairs import PAIRS_SCHEMA
from circuitflow.pair_logit_attribution import run_stage
from circuitflow.stage import Params
from circuitflow.tables import read_table, write_table

LENGTHS = (7, 5, 9, 6, 8)  # unequal, so batches are padded; five pairs, batches of two


def pairs_table(vocab_size: int) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rows = []
    for i, n in enumerate(LENGTHS):
        clean = rng.integers(1, vocab_size, n).tolist()
        corrupt = clean.copy()
        corrupt[1] = int(rng.integers(1, vocab_size))
        answers = rng.choice(np.arange(1, vocab_size), 2, replace=False)
        rows.append({
            "pair_id": 10 + i, "clean_prompt": "", "corrupt_prompt": "",
            "clean_token_ids": clean, "corrupt_token_ids": corrupt,
            "clean_answer_id": int(answers[0]), "corrupt_answer_id": int(answers[1]),
            "clean_word": "", "corrupt_word": "", "token_roles": ["instruction"] * n,
            "batch": i // 2,
        })
    # Written out of order: the stage reports pairs by pair_id whatever the file's order.
    return pd.DataFrame(rows[::-1], columns=PAIRS_SCHEMA.names)


@pytest.fixture(scope="module", params=("gpt2", "llama"))
def pair_run(request, tiny_model_dir, tmp_path_factory):
    arch = request.param
    tmp = tmp_path_factory.mktemp(f"pair_dla_{arch}")
    model, tokenizer = saved_with_random_norms(tiny_model_dir(arch), tmp / "model")
    pairs = pairs_table(len(tokenizer))
    write_table(pairs, tmp / "pairs.parquet", schema=PAIRS_SCHEMA)
    params = Params("pair-logit-attribution", {
        "model": {"source": "local", "path": str(tmp / "model"), "name": "tiny"},
        "dataset": "toy", "feature": "FIELD", "device": "cpu", "plots": {"dpi": 40},
        "logit_attribution": {"batch_size": 2},
    })
    out = {"table": tmp / "pair_dla.parquet", "plot": tmp / "pair_dla.png"}
    run_stage(params, pairs=str(tmp / "pairs.parquet"), **{k: str(v) for k, v in out.items()})
    return arch, model, pairs, read_table(out["table"]), out


def test_components_add_up_to_the_logit_difference_of_each_pair(pair_run):
    _, model, pairs, table, _ = pair_run
    assert sorted(table["pair_id"].unique()) == sorted(pairs["pair_id"])
    for pair in pairs.itertuples():
        with torch.no_grad():
            final = model(torch.tensor([list(pair.clean_token_ids)])).logits[0, -1]
        expected = float(final[pair.clean_answer_id] - final[pair.corrupt_answer_id])
        values = table.loc[table["pair_id"] == pair.pair_id, "value"]
        assert abs(expected) > 1e-3  # a difference to add up to, not zero
        assert values.sum() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_one_row_per_pair_and_component_in_model_order(pair_run):
    arch, _, _, table, _ = pair_run
    first = table[table["pair_id"] == table["pair_id"].iloc[0]]
    assert list(table["pair_id"]) == sorted(table["pair_id"])
    assert (table.groupby("pair_id").size() == len(first)).all()
    names = list(first["node"])
    heads = [names.index(f"l0.h{h}") for h in range(4)]
    assert names[0] == "embed" and heads == sorted(heads) and names.index("l0.mlp") > heads[-1]
    assert names.index("l1.h0") > names.index("l0.mlp")
    assert ("pos_embed" in names) == (arch == "gpt2")  # rotary models add no positions
    mlp = first[first["node"] == "l1.mlp"]
    assert mlp["layer"].eq(1).all() and mlp["head"].isna().all()
    head = first[first["node"] == "l1.h2"]
    assert head["layer"].eq(1).all() and head["head"].eq(2).all()


def test_plot_is_a_png(pair_run):
    *_, out = pair_run
    assert out["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
