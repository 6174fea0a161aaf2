"""Clean/corrupt pairs obey every constraint EAP relies on, and only model-correct pairs are kept."""

import itertools
import logging
import re
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from circuitflow.data import phrasing
from circuitflow.data.examples import generate_examples
from circuitflow.data.vocabulary import FIELDS, TABLES
from circuitflow.errors import CircuitflowError
from circuitflow.eap import pairs as P
from circuitflow.models.loader import LoadedModel, load_model
from circuitflow.models.tokenizer import train_tokenizer
from tiny_models import tiny_config

EAP = dict(
    batch_size=4, n_batches=2, num_fields=2, use_novel_names=False,
    use_synonyms_table=False, use_synonyms_field=False, seed=7,
)
WHAT = "test model, command set cs1, feature {}"


@pytest.fixture(scope="module")
def tokenizer():
    """A tokenizer like the built-in model's that keeps most names, synonyms and novel words whole."""
    data = generate_examples("cs1", 500, seed=3)
    words = [*TABLES, *(w for s in TABLES.values() for w in s), *(f.name for f in FIELDS),
             *(w for f in FIELDS for w in f.synonyms), *P.NOVEL_WORDS]
    return train_tokenizer(list(data["prompt"] + data["sql"]) + [" ".join(words)] * 20, 4096)


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


def candidate_stream(tokenizer, feature, eap, n_draws):
    """The candidates make_pairs considers, in its order."""
    return [c for c in itertools.islice(P.draw_candidates(tokenizer, feature, eap), n_draws) if c]


def oracle_for(tokenizer, candidates):
    sequences = [(c.clean_prompt_ids, c.clean_sql_ids) for c in candidates]
    return Oracle(sequences, len(tokenizer), tokenizer.eos_token_id)


def single(tokenizer, word):
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, word
    return ids[0]


def all_correct_pairs(tokenizer, feature, eap):
    oracle = oracle_for(tokenizer, candidate_stream(tokenizer, feature, eap, 200))
    return P.make_pairs(oracle, tokenizer, feature, eap, WHAT.format(feature))


def check_constraints(tokenizer, pairs, feature, eap):
    assert len(pairs) == eap["batch_size"] * eap["n_batches"]
    assert pairs["pair_id"].tolist() == list(range(len(pairs)))
    assert pairs["batch"].tolist() == [i // eap["batch_size"] for i in range(len(pairs))]
    for p in pairs.itertuples():
        clean, corrupt = list(p.clean_token_ids), list(p.corrupt_token_ids)
        # Same length; exactly one token differs, and it is the swapped word, a single token.
        assert len(clean) == len(corrupt)
        diff = [i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b]
        assert len(diff) == 1
        assert clean[diff[0]] == single(tokenizer, p.clean_word)
        assert corrupt[diff[0]] == single(tokenizer, p.corrupt_word)
        # The texts differ in exactly that word.
        clean_words, corrupt_words = p.clean_prompt.split(), p.corrupt_prompt.split()
        assert len(clean_words) == len(corrupt_words)
        changed = [(a, b) for a, b in zip(clean_words, corrupt_words) if a != b]
        assert changed == [(p.clean_word, p.corrupt_word)]
        # Where the word sits: instruction or CREATE TABLE, table or first field.
        english, context = re.fullmatch(
            r"### Instruction: (.*) ### Context: (.*) ### Response: (SELECT.*)", p.clean_prompt
        ).groups()[:2]
        table, first_field = re.fullmatch(r"CREATE TABLE (\w+) \( (\w+) .*\)", context).groups()
        on_table = feature.endswith("TABLENAME")
        if feature.startswith("DEF"):
            assert p.clean_word == (table if on_table else first_field)
        else:
            named = re.fullmatch(r"Show me the (.+) from the (.+) table", english)
            assert named.group(2 if on_table else 1).startswith(p.clean_word)
        # Cut just before the SQL token that copies the word; the answers are the copied names.
        assert p.clean_prompt.endswith(" FROM" if on_table else "### Response: SELECT")
        prompt = p.clean_prompt[: p.clean_prompt.index("### Response: ") + len("### Response: ")]
        columns = re.findall(r"(\w+) [A-Z]", context.split("(", 1)[1])
        sql = f"SELECT {', '.join(columns)} FROM {table}"
        full = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (prompt, sql)]
        assert clean + [p.clean_answer_id] == (full[0] + full[1])[: len(clean) + 1]
        assert p.clean_answer_id == single(tokenizer, table if on_table else first_field)
        corrupt_name = tokenizer.decode([p.corrupt_answer_id]).strip()
        assert p.corrupt_answer_id == single(tokenizer, corrupt_name)
        if feature.startswith("DEF") or eap["use_novel_names"]:
            assert corrupt_name == p.corrupt_word
        else:
            names = TABLES if on_table else {f.name: f.synonyms for f in FIELDS}
            assert p.corrupt_word in (corrupt_name, *names[corrupt_name])
        if eap["use_novel_names"]:
            assert p.corrupt_word in P.NOVEL_WORDS
            assert p.corrupt_word not in re.findall(r"\w+", p.clean_prompt)
        else:
            assert corrupt_name not in re.findall(r"\w+", p.clean_prompt)


@pytest.mark.parametrize("feature", P.FEATURES)
@pytest.mark.parametrize("options", [
    {},
    {"use_novel_names": True},
    {"use_synonyms_table": True, "use_synonyms_field": True},
], ids=["names", "novel", "synonyms"])
def test_pairs_obey_every_constraint(tokenizer, feature, options):
    eap = {**EAP, **options}
    pairs = all_correct_pairs(tokenizer, feature, eap)
    check_constraints(tokenizer, pairs, feature, eap)
    if options.get("use_synonyms_table") and feature == "ENGTABLENAME":
        assert (pairs["clean_word"] != pairs["clean_prompt"].str.extract(r"CREATE TABLE (\w+)")[0]).any()


def test_only_pairs_the_model_answers_correctly_are_kept(tokenizer):
    feature = "ENGFIELDNAME"
    stream = candidate_stream(tokenizer, feature, EAP, 400)
    correct = stream[1::3]  # the model gets two candidates in three wrong
    pairs = P.make_pairs(oracle_for(tokenizer, correct), tokenizer, feature, EAP, WHAT.format(feature))
    needed = EAP["batch_size"] * EAP["n_batches"]
    assert [list(ids) for ids in pairs["clean_token_ids"]] == [c.clean_token_ids for c in correct[:needed]]
    assert pairs["corrupt_answer_id"].tolist() == [c.corrupt_answer_id for c in correct[:needed]]


def test_pairs_are_deterministic_and_seeded(tokenizer):
    eap = {**EAP, "use_synonyms_field": True}
    first = all_correct_pairs(tokenizer, "ENGFIELDNAME", eap)
    assert first.equals(all_correct_pairs(tokenizer, "ENGFIELDNAME", eap))
    other = all_correct_pairs(tokenizer, "ENGFIELDNAME", {**eap, "seed": 8})
    assert not first["clean_prompt"].equals(other["clean_prompt"])


def test_too_few_correct_pairs_is_a_clear_error(tokenizer, monkeypatch):
    monkeypatch.setattr(P, "MAX_DRAWS_PER_PAIR", 10)
    three_correct = oracle_for(tokenizer, candidate_stream(tokenizer, "DEFTABLENAME", EAP, 10)[:3])
    message = r"test model, command set cs1, feature DEFTABLENAME: found only 3 of the 8 pairs"
    with pytest.raises(CircuitflowError, match=message):
        P.make_pairs(three_correct, tokenizer, "DEFTABLENAME", EAP, WHAT.format("DEFTABLENAME"))


def test_a_tokenizer_that_splits_the_novel_words_is_named_as_the_cause(tiny_model_dir):
    # The tiny test tokenizer knows no novel word: no draw can pass the token checks.
    loaded = load_model({"source": "local", "path": str(tiny_model_dir("gpt2"))})
    eap = {**EAP, "use_novel_names": True, "batch_size": 1, "n_batches": 1}
    with pytest.raises(CircuitflowError, match=r"0 passed .* splits the novel words"):
        P.make_pairs(loaded.model, loaded.tokenizer, "DEFFIELDNAME", eap, "m")


def test_run_stage_with_a_real_untrained_model_names_model_command_set_and_feature(
    tokenizer, tmp_path, caplog, monkeypatch
):
    # A random model answers no clean prompt correctly: the stage must say where, and write nothing.
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", len(tokenizer)))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    params = {
        "model": {"source": "local", "path": str(tmp_path / "model")}, "device": "cpu",
        "eap": {**EAP, "batch_size": 2, "n_batches": 1},
        "command_set": "cs2", "feature": "ENGTABLENAME",
    }
    out = tmp_path / "pairs.parquet"
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(P, "MAX_DRAWS_PER_PAIR", 10)  # enough to show it, fewer forward passes
    with pytest.raises(CircuitflowError, match=r"local model at .*, command set cs2, feature ENGTABLENAME"):
        P.run_stage(params, out=str(out))
    assert not out.exists()
    # The real checker did run, on pairs that passed the token checks.
    assert re.search(r"20 draws, [1-9]\d* passed the token checks, 0 answered correctly", caplog.text)


def test_run_stage_writes_the_pairs_table(tokenizer, monkeypatch, tmp_path):
    feature = "DEFFIELDNAME"
    oracle = oracle_for(tokenizer, candidate_stream(tokenizer, feature, EAP, 200))
    monkeypatch.setattr(P, "load_model", lambda spec, device: LoadedModel(oracle, tokenizer, "oracle"))
    out = tmp_path / "pairs.parquet"
    params = {"model": {}, "device": "cpu", "eap": EAP, "command_set": "cs1", "feature": feature}
    P.run_stage(params, out=str(out))
    table = pq.read_table(out)
    assert table.schema.equals(P.PAIRS_SCHEMA)
    check_constraints(tokenizer, table.to_pandas(), feature, EAP)


def test_novel_words_name_no_table_or_field():
    vocabulary_words = set()
    for name, synonyms in [*TABLES.items(), *((f.name, f.synonyms) for f in FIELDS)]:
        vocabulary_words |= {name, *" ".join(synonyms).split()}
    assert not vocabulary_words & set(P.NOVEL_WORDS)


def test_the_pair_template_is_one_the_models_are_trained_on():
    assert P.TEMPLATE in phrasing.SELECT_TEMPLATES
