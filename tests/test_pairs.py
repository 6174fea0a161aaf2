"""Clean/corrupt pairs obey every constraint EAP relies on, and only model-correct pairs are kept."""

import logging
import re
from types import SimpleNamespace

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from circuitflow.data import phrasing
from circuitflow.data.examples import generate_examples
from circuitflow.data.vocabulary import FIELDS, TABLES
from circuitflow.eap import pairs as P
from circuitflow.errors import CircuitflowError
from circuitflow.models.loader import LoadedModel, load_model
from circuitflow.models.tokenizer import train_tokenizer
from circuitflow.tasks import dataset_entry, prompts, tinysql
from tiny_models import tiny_config

EAP = dict(batch_size=4, n_batches=2, seed=7)
WHAT = "test model, dataset d, feature {}"


def dataset(**options):
    return {**dataset_entry("d", {"task": "tinysql", **options}), "name": "d"}


@pytest.fixture(scope="module")
def tokenizer():
    """A tokenizer like the built-in model's that keeps most names, synonyms and novel words whole."""
    texts = []
    for cs in ("cs1", "cs2", "cs3"):
        data = generate_examples(cs, 300, seed=3)
        texts += list(data["prompt"] + data["sql"])
    words = [*TABLES, *(w for s in TABLES.values() for w in s), *(f.name for f in FIELDS),
             *(w for f in FIELDS for w in f.synonyms), *tinysql.NOVEL_WORDS]
    return train_tokenizer(texts + [" ".join(words)] * 20, 4096)


class Oracle(torch.nn.Module):
    """A stand-in causal LM whose greedy decoding writes exactly ``sequences`` (then EOS) after
    their prompts and goes wrong on any other prompt, so that the real teacher-forced checker
    decides which pairs are correct."""

    def __init__(self, sequences, vocab_size: int, eos: int):
        super().__init__()
        self.device_anchor = torch.nn.Parameter(torch.zeros(1))
        self.vocab_size = vocab_size
        self.next_token = {}
        for prompt, answer in sequences:
            full = prompt + answer + [eos]
            for i in range(len(prompt), len(full)):
                self.next_token[tuple(full[:i])] = full[i]

    def forward(self, tokens, logits_to_keep=0):
        rows, width = tokens.shape
        # Index vocab_size is a token no reference ever contains: the wrong prediction.
        logits = torch.zeros(rows, width, self.vocab_size + 1)
        for r in range(rows):
            ids = tokens[r].tolist()
            for t in range(width):
                logits[r, t, self.next_token.get(tuple(ids[: t + 1]), self.vocab_size)] = 1.0
        return SimpleNamespace(logits=logits[:, -(logits_to_keep or width):])


def candidates(tokenizer, data, feature, n_draws, seed=EAP["seed"]):
    """The candidates make_pairs considers, in its order."""
    drawn = tinysql.pairs(data, feature, n_draws, seed)
    found = [P.tokenize_pair(tokenizer, row) for row in drawn.itertuples()]
    return [c for c in found if isinstance(c, P.Candidate)]


def oracle_for(tokenizer, kept):
    sequences = [(c.clean_prompt_ids, c.clean_answer_ids) for c in kept]
    return Oracle(sequences, len(tokenizer), tokenizer.eos_token_id)


def all_correct_pairs(tokenizer, data, feature, eap=EAP):
    oracle = oracle_for(tokenizer, candidates(tokenizer, data, feature, 300, eap["seed"]))
    return P.make_pairs(oracle, tokenizer, data, feature, eap, WHAT.format(feature))


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_constraints(tokenizer, pairs, data, feature, eap=EAP):
    assert len(pairs) == eap["batch_size"] * eap["n_batches"]
    assert pairs["pair_id"].tolist() == list(range(len(pairs)))
    assert pairs["batch"].tolist() == [i // eap["batch_size"] for i in range(len(pairs))]
    on_table = feature.endswith("TABLENAME")
    for p in pairs.itertuples():
        clean, corrupt = list(p.clean_token_ids), list(p.corrupt_token_ids)
        assert len(clean) == len(corrupt) == len(p.token_roles)
        # The prompts differ only in the swapped word, where the feature says it sits.
        instruction, context = re.fullmatch(
            r"### Instruction: (.*) ### Context: (.*) ### Response: .*", p.clean_prompt
        ).groups()
        words = [re.findall(r"\w+", text) for text in (p.clean_prompt, p.corrupt_prompt)]
        changed = [(a, b) for a, b in zip(*words) if a != b]
        assert changed and {a for a, _ in changed} <= set(p.clean_word.split())
        part = instruction if feature.startswith("ENG") else context
        assert re.search(rf"\b{re.escape(p.clean_word)}\b", part)
        table = re.match(r"CREATE TABLE (\w+)", context).group(1)
        if feature == "DEFTABLENAME":
            assert p.clean_word == table
        # Cut just before the first answer token that differs: the (first token of the) clean
        # and corrupt names.
        assert p.clean_answer_id != p.corrupt_answer_id
        written = tokenizer.decode(clean + [p.clean_answer_id]).split("### Response: ", 1)[1]
        clean_name = re.findall(r"\w+", written)[-1]  # the name the answer token starts or ends
        if on_table:
            assert table.startswith(clean_name) and p.clean_prompt.rstrip().endswith("FROM")
        else:
            columns = re.findall(r"(\w+) [A-Z]", context.split("(", 1)[1])
            assert any(c.startswith(clean_name) for c in columns)
        assert p.corrupt_word not in re.findall(r"\w+", p.clean_prompt)
        if data["use_novel_names"]:
            assert p.corrupt_word in tinysql.NOVEL_WORDS
        # The response before the cut is the clean SQL's start: the same in both.
        response = p.clean_prompt.split("### Response: ", 1)[1]
        assert p.corrupt_prompt.endswith(response)


FEATURE_CASES = [
    pytest.param({}, id="cs1"),
    pytest.param({"command_set": "cs2"}, id="cs2"),
    pytest.param({"command_set": "cs3", "use_synonyms_table": True, "use_synonyms_field": True},
                 id="cs3-synonyms"),
    pytest.param({"use_novel_names": True}, id="novel"),
    pytest.param({"command_set": "cs2", "pair_template": "cs1"}, id="cs1-template"),
]


@pytest.mark.parametrize("feature", tinysql.FEATURES)
@pytest.mark.parametrize("options", FEATURE_CASES)
def test_pairs_obey_every_constraint(tokenizer, feature, options):
    data = dataset(**options)
    check_constraints(tokenizer, all_correct_pairs(tokenizer, data, feature), data, feature)


def test_each_command_set_has_pairs_of_its_own(tokenizer):
    texts = {cs: tinysql.pairs(dataset(command_set=cs), "DEFTABLENAME", 40, 7)
             for cs in ("cs1", "cs2", "cs3")}
    assert texts["cs2"]["clean_answer"].str.contains(" ORDER BY ").all()
    assert texts["cs3"]["clean_answer"].str.contains(r"\w+\(\w+\) AS ").all()
    assert not texts["cs1"]["clean_answer"].str.contains("ORDER BY|\\(").any()
    tables = {cs: all_correct_pairs(tokenizer, dataset(command_set=cs), "DEFTABLENAME")
              for cs in texts}
    # CS3 pairs are cut after their aggregates: the prompts end in a different SQL.
    assert tables["cs3"]["clean_prompt"].str.contains(r"AS \w+_\w+").all()
    prompts_by_set = [set(t["clean_prompt"]) for t in tables.values()]
    assert not (prompts_by_set[0] & prompts_by_set[1] or prompts_by_set[1] & prompts_by_set[2])
    template = all_correct_pairs(
        tokenizer, dataset(command_set="cs3", pair_template="cs1"), "DEFTABLENAME"
    )
    assert template["clean_prompt"].str.contains("Show me the ").all()


def test_only_pairs_the_model_answers_correctly_are_kept(tokenizer):
    feature, data = "ENGFIELDNAME", dataset()
    stream = candidates(tokenizer, data, feature, 300)
    correct = stream[1::3]  # the model gets two candidates in three wrong
    pairs = P.make_pairs(oracle_for(tokenizer, correct), tokenizer, data, feature, EAP, "m")
    needed = EAP["batch_size"] * EAP["n_batches"]
    assert [list(ids) for ids in pairs["clean_token_ids"]] == [c.clean_token_ids for c in correct[:needed]]
    assert pairs["corrupt_answer_id"].tolist() == [c.corrupt_answer_id for c in correct[:needed]]


def test_pairs_are_deterministic_and_seeded(tokenizer):
    data = dataset(use_synonyms_field=True)
    first = all_correct_pairs(tokenizer, data, "ENGFIELDNAME")
    assert first.equals(all_correct_pairs(tokenizer, data, "ENGFIELDNAME"))
    other = all_correct_pairs(tokenizer, data, "ENGFIELDNAME", {**EAP, "seed": 8})
    assert not first["clean_prompt"].equals(other["clean_prompt"])


def test_too_few_correct_pairs_is_a_clear_error(tokenizer, monkeypatch):
    monkeypatch.setattr(P, "MAX_DRAWS_PER_PAIR", 3)
    data = dataset()
    three = oracle_for(tokenizer, candidates(tokenizer, data, "DEFTABLENAME", 24)[:3])
    with pytest.raises(CircuitflowError, match=r"dataset d, feature DEFTABLENAME: found only 3 of the 8 pairs"):
        P.make_pairs(three, tokenizer, data, "DEFTABLENAME", EAP, WHAT.format("DEFTABLENAME"))


def test_an_unknown_feature_names_the_task_s_features(tokenizer):
    with pytest.raises(CircuitflowError, match="task tinysql has no feature 'X'; it has ENGTABLENAME"):
        P.make_pairs(None, tokenizer, dataset(), "X", EAP, "m")


def test_run_stage_with_a_real_untrained_model_names_model_dataset_and_feature(
    tokenizer, tmp_path, caplog, monkeypatch
):
    # A random model answers no clean prompt correctly: the stage must say where, and write nothing.
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", len(tokenizer)))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    params = {
        "model": {"source": "local", "path": str(tmp_path / "model")}, "device": "cpu",
        "eap": {**EAP, "batch_size": 2, "n_batches": 1},
        "dataset": dataset(command_set="cs2"), "feature": "ENGTABLENAME",
    }
    out = tmp_path / "pairs.parquet"
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(P, "MAX_DRAWS_PER_PAIR", 10)  # enough to show it, fewer forward passes
    with pytest.raises(CircuitflowError, match=r"local model at .*, dataset d, feature ENGTABLENAME"):
        P.run_stage(params, out=str(out))
    assert not out.exists()
    # The real checker did run, on pairs that passed the token checks.
    assert re.search(r"20 drawn, [1-9]\d* passed the token checks, 0 answered correctly", caplog.text)


def test_run_stage_writes_the_pairs_table(tokenizer, monkeypatch, tmp_path):
    feature, data = "DEFFIELDNAME", dataset(command_set="cs2")
    oracle = oracle_for(tokenizer, candidates(tokenizer, data, feature, 300))
    monkeypatch.setattr(P, "load_model", lambda spec, device: LoadedModel(oracle, tokenizer, "oracle"))
    out = tmp_path / "pairs.parquet"
    params = {"model": {}, "device": "cpu", "eap": EAP, "dataset": data, "feature": feature}
    P.run_stage(params, out=str(out))
    table = pq.read_table(out)
    assert table.schema.equals(P.PAIRS_SCHEMA)
    check_constraints(tokenizer, table.to_pandas(), data, feature)


def test_own_prompts_of_unequal_token_length_name_the_row(tiny_model_dir, tmp_path):
    loaded = load_model({"source": "local", "path": str(tiny_model_dir("gpt2"))})
    table = pd.DataFrame({
        "prompt": ["show me the price", "show me the name"],
        "answer": [" price", " name"],
        "corrupt_prompt": ["show me the name", "show me the price and the name"],
        "corrupt_answer": [" name", " price"],
    })
    table.to_json(tmp_path / "own.jsonl", orient="records", lines=True)
    data = {**dataset_entry("own", {"task": "prompts", "path": str(tmp_path / "own.jsonl")}),
            "name": "own"}
    with pytest.raises(CircuitflowError, match=r"the pair in row 1: the corrupt prompt has \d+ tokens"):
        P.make_pairs(loaded.model, loaded.tokenizer, data, "CORRUPT", EAP, "m")
    assert prompts.FEATURES == ("CORRUPT",)


def test_novel_words_name_no_table_or_field():
    vocabulary_words = set()
    for name, synonyms in [*TABLES.items(), *((f.name, f.synonyms) for f in FIELDS)]:
        vocabulary_words |= {name, *" ".join(synonyms).split()}
    assert not vocabulary_words & set(tinysql.NOVEL_WORDS)


def test_the_pair_template_is_one_the_models_are_trained_on():
    assert tinysql.CS1_TEMPLATE in phrasing.SELECT_TEMPLATES
