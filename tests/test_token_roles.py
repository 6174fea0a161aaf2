import re

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from circuitflow.models.tokenizer import train_tokenizer
from circuitflow.tasks import dataset_entry, tinysql
from circuitflow.token_roles import UNCOVERED, tokenize_example
from tiny_models import ARCHITECTURES

MARKERS = ("### Instruction:", "### Context:", "### Response:")
SECTION_ROLES = {"template", "instruction", "context", "response"}


def named_spans(spans):
    return [span for span in spans if span["role"] not in SECTION_ROLES]


@pytest.fixture(scope="module")
def examples():
    frames = [
        tinysql.examples(dataset_entry(cs, {
            "task": "tinysql", "command_set": cs, "use_synonyms_table": True,
            "use_synonyms_field": True,
        }), 60, seed=21)
        for cs in ("cs1", "cs2", "cs3")
    ]
    return [row for df in frames for row in df.itertuples(index=False)]


def sentencepiece_like(texts):
    """A Unigram tokenizer with the Metaspace "▁" pre-tokenizer, as Llama-2-style tokenizers."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<unk>", "</s>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")


@pytest.fixture(scope="module", params=["byte_level", "sentencepiece_like", *ARCHITECTURES])
def tokenizer_kind(request, examples, tiny_model_dir):
    """(tokenizer, whether it splits words from punctuation as GPT-2's byte-level BPE does)."""
    texts = [row.prompt + row.answer for row in examples]
    if request.param == "byte_level":
        return train_tokenizer(texts, vocab_size=600), True  # small: names split into pieces
    if request.param == "sentencepiece_like":
        return sentencepiece_like(texts), False  # may merge "MAX(" into one token
    return AutoTokenizer.from_pretrained(tiny_model_dir(request.param)), True


@pytest.fixture
def tokenizer(tokenizer_kind):
    return tokenizer_kind[0]


def test_roles_label_the_tokens_that_spell_each_span(examples, tokenizer_kind):
    tokenizer, splits_punctuation = tokenizer_kind
    for row in examples:
        prompt_ids, answer_ids, roles = tokenize_example(tokenizer, row.prompt, row.answer, row.spans)
        assert prompt_ids == tokenizer(row.prompt, add_special_tokens=False)["input_ids"]
        assert answer_ids == tokenizer(row.answer, add_special_tokens=False)["input_ids"]
        assert len(roles) == len(prompt_ids) + len(answer_ids)

        text = row.prompt + row.answer
        offsets = tokenizer(row.prompt, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"
        ] + [
            (s + len(row.prompt), e + len(row.prompt))
            for s, e in tokenizer(row.answer, add_special_tokens=False, return_offsets_mapping=True)[
                "offset_mapping"
            ]
        ]
        for span in named_spans(row.spans):
            labelled = [(s, e) for (s, e), role in zip(offsets, roles) if role == span["role"]]
            span_text = text[span["start"]:span["end"]]
            assert labelled, (span["role"], span_text)
            # Every labelled token overlaps the span; together they cover its every visible char.
            assert all(max(s, span["start"]) < min(e, span["end"]) for s, e in labelled)
            covered = {p for s, e in labelled for p in range(s, e)}
            visible = [p for p in range(span["start"], span["end"]) if not text[p].isspace()]
            assert all(p in covered for p in visible), (span["role"], span_text)
            if splits_punctuation and re.fullmatch(r"\w+", span_text):  # a name: tokens spell it
                assert "".join(text[s:e] for s, e in labelled).strip() == span_text

        assert UNCOVERED not in roles  # the spans cover every character
        for (s, e), role in zip(offsets, roles):
            if role not in SECTION_ROLES:
                continue
            assert not any(max(s, sp["start"]) < min(e, sp["end"]) for sp in named_spans(row.spans))
            visible = text[s:e].strip()
            if role == "template":
                assert any(visible in marker for marker in MARKERS), (visible, row.prompt)
            elif role == "instruction":
                assert s >= len("### Instruction") and e <= row.prompt.index(" ### Context:") + 1
            elif role == "context":
                assert row.prompt.index("### Context:") < s
                assert e <= row.prompt.index(" ### Response:") + 1
            else:
                assert s >= len(row.prompt) - 1  # the prompt's final space, then the SQL


def test_response_roles_come_from_the_answer_tokens(examples, tokenizer):
    row = examples[-1]  # CS3: aggregates and ORDER BY in the answer
    prompt_ids, _, roles = tokenize_example(tokenizer, row.prompt, row.answer, row.spans)
    prompt_roles, answer_roles = roles[: len(prompt_ids)], roles[len(prompt_ids):]
    assert "sql_table" in answer_roles and "sql_table" not in prompt_roles
    assert "def_table" in prompt_roles and "eng_table" in prompt_roles
    assert not any(r.startswith(("eng_", "def_")) for r in answer_roles)


class FixedOffsets:
    """A stand-in tokenizer returning given offsets, to test edge cases real ones rarely produce."""

    def __init__(self, offsets_by_text):
        self.offsets_by_text = offsets_by_text

    def __call__(self, text, add_special_tokens, return_offsets_mapping):
        offsets = self.offsets_by_text[text]
        return {"input_ids": list(range(len(offsets))), "offset_mapping": offsets}


def test_empty_offsets_and_tokens_over_two_spans():
    prompt = "### Instruction: get a ### Context: CREATE TABLE t ( a INT ) ### Response: "
    sql = "SELECT a FROM t"
    a_in_instruction = prompt.index("a ###")
    spans = [
        {"role": "eng_field_1", "start": a_in_instruction, "end": a_in_instruction + 1},
        {"role": "sql_field_1", "start": len(prompt) + 7, "end": len(prompt) + 8},
        {"role": "sql_table", "start": len(prompt) + 14, "end": len(prompt) + 15},
        *tinysql.section_spans(prompt, len(prompt + sql)),
    ]
    tokenizer = FixedOffsets({
        # an empty-offset token at the start, one token for the whole instruction body
        prompt: [(0, 0), (0, 16), (16, a_in_instruction + 1), (a_in_instruction + 1, len(prompt))],
        # one token over "a FROM t" (two spans: the first wins), then an empty one at the end
        sql: [(0, 6), (6, 15), (15, 15)],
    })
    _, _, roles = tokenize_example(tokenizer, prompt, sql, spans)
    # the last prompt token is " ### Context: ... ### Response: ", placed by its first visible char
    assert roles == ["template", "template", "eng_field_1", "template",
                     "response", "sql_field_1", "response"]


def test_prompt_without_markers_is_an_error():
    with pytest.raises(ValueError, match="markers"):
        tinysql.section_spans("no markers", len("no markers SELECT a"))


def test_a_token_no_span_reaches_is_uncovered():
    tokenizer = FixedOffsets({"ab cd": [(0, 2), (2, 5)], " ef": [(0, 3), (3, 3)]})
    spans = [{"role": "first", "start": 0, "end": 2}, {"role": "last", "start": 5, "end": 8}]
    _, _, roles = tokenize_example(tokenizer, "ab cd", " ef", spans)
    # " ef" is placed by its visible "ef"; the empty token at the end by the last character.
    assert roles == ["first", UNCOVERED, "last", "last"]
