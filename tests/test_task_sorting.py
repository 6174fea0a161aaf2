from collections import Counter

import pytest
from transformers import AutoTokenizer

from circuitflow.errors import ConfigError
from circuitflow.tasks import sorting
from span_roles import roles_by_overlap

SMALL = {"length": 5, "max_value": 3, "class_output": 2}
RARE_REPEATS = {"length": 5, "max_value": 999, "class_output": 2}


def _words(text: str) -> list[int]:
    return [int(w) for w in text.split() if w not in ("START", "STOP")]


@pytest.mark.parametrize("options", [{}, SMALL])
def test_same_seed_same_examples_other_seed_other(options):
    a = sorting.examples(options, 40, seed=3)
    assert a.equals(sorting.examples(options, 40, seed=3))
    assert list(a["example_id"]) == list(range(40))
    assert list(a["prompt"]) != list(sorting.examples(options, 40, seed=4)["prompt"])


@pytest.mark.parametrize("options", [{}, SMALL, RARE_REPEATS, RARE_REPEATS | {"balanced": False}])
def test_answers_sorted_classes_as_defined_and_balanced(options):
    length = options.get("length", 20)
    k = options.get("class_output", 10)
    top = options.get("max_value", 29)
    df = sorting.examples(options, 101, seed=0)
    for row in df.to_dict("records"):
        words = row["prompt"].split()
        assert words[0] == "START" and words[-1] == "STOP" and len(words) == length + 2
        values = [int(w) for w in words[1:-1]]
        assert all(0 <= v <= top for v in values) and values == list(row["values"])
        assert row["answer"].startswith(" ")
        out = [int(w) for w in row["answer"].split()]
        assert out == sorted(values)
        expected = "repeat" if out[k - 1] == out[k - 2] else "new"
        assert row["class"] == expected
        assert row["class_role"] == f"out_{k}"
    counts = Counter(df["class"])
    if options.get("balanced", True):
        assert set(counts) == {"repeat", "new"} and abs(counts["repeat"] - counts["new"]) <= 1
    else:  # uniform sequences of 5 values out of 1000 seldom start with a repeat
        assert counts["repeat"] < 10


@pytest.mark.parametrize("options", [{}, SMALL])
def test_spans_cover_every_character_and_roles_every_token(options):
    df = sorting.examples(options, 30, seed=1)
    tok = sorting.tokenizer(options, list(df["prompt"] + df["answer"]), vocab_size=0)
    for row in df.to_dict("records"):
        text = row["prompt"] + row["answer"]
        covered = sorted(p for sp in row["spans"] for p in range(sp["start"], sp["end"]))
        assert covered == list(range(len(text)))  # disjoint, and nothing left out
        roles = roles_by_overlap(tok, row["prompt"], row["answer"], row["spans"])
        n = len(row["values"])
        assert roles == (["start"] + [f"in_{i}" for i in range(1, n + 1)] + ["stop"]
                         + [f"out_{k}" for k in range(1, n + 1)])
        tokens = tok.convert_ids_to_tokens(
            tok(row["prompt"], add_special_tokens=False)["input_ids"]
            + tok(row["answer"], add_special_tokens=False)["input_ids"]
        )
        by_role = dict(zip(roles, tokens))
        for i, v in enumerate(row["values"], 1):
            assert by_role[f"in_{i}"] == str(v)
        for k, v in enumerate(sorted(row["values"]), 1):
            assert by_role[f"out_{k}"] == str(v)


def test_tokenizer_word_level_offsets_and_saved_copy(tmp_path):
    df = sorting.examples({}, 50, seed=2)
    texts = list(df["prompt"] + df["answer"])
    tok = sorting.tokenizer({}, texts, vocab_size=2048)
    top = sorting.OPTIONS["max_value"]["default"]
    assert len(tok) == top + 4  # 0..top, START, STOP, EOS
    assert [tok.convert_tokens_to_ids(str(v)) for v in range(top + 1)] == list(range(top + 1))
    assert tok.eos_token == tok.pad_token == tok.bos_token == tok.unk_token == "<|endoftext|>"
    assert tok.eos_token_id == tok.pad_token_id
    assert tok("nonsense", add_special_tokens=False)["input_ids"] == [tok.eos_token_id]
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in texts[:5]:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert len(enc["input_ids"]) == len(text.split())
        pieces = [text[s:e] for s, e in enc["offset_mapping"]]
        assert pieces == text.split()
        assert loaded(text, add_special_tokens=False)["input_ids"] == enc["input_ids"]


@pytest.mark.parametrize("options", [{}, SMALL])
def test_pairs_change_one_input_and_the_answer(options):
    df = sorting.pairs(options, "INPUT_VALUE", 60, seed=5)
    assert df.equals(sorting.pairs(options, "INPUT_VALUE", 60, seed=5))
    assert not df.equals(sorting.pairs(options, "INPUT_VALUE", 60, seed=6))
    tok = sorting.tokenizer(options, list(df["clean_prompt"] + df["clean_answer"]
                                 + df["corrupt_prompt"] + df["corrupt_answer"]), vocab_size=0)

    def n_tokens(prompt, answer):
        return (len(tok(prompt, add_special_tokens=False)["input_ids"])
                + len(tok(answer, add_special_tokens=False)["input_ids"]))

    for row in df.to_dict("records"):
        roles = roles_by_overlap(tok, row["clean_prompt"], row["clean_answer"], row["spans"])
        assert roles[0] == "start" and roles[-1] == f"out_{len(roles) // 2 - 1}"
        clean, corrupt = _words(row["clean_prompt"]), _words(row["corrupt_prompt"])
        assert sum(a != b for a, b in zip(clean, corrupt)) == 1 and len(clean) == len(corrupt)
        assert _words(row["clean_answer"]) == sorted(clean)
        assert _words(row["corrupt_answer"]) == sorted(corrupt)
        assert row["clean_answer"] != row["corrupt_answer"]
        assert (n_tokens(row["clean_prompt"], row["clean_answer"])
                == n_tokens(row["corrupt_prompt"], row["corrupt_answer"]))


def test_options_checked():
    with pytest.raises(ConfigError, match="class_output"):
        sorting.examples({"length": 5, "class_output": 6}, 4, seed=0)
    with pytest.raises(ConfigError, match="INPUT_VALUE"):
        sorting.pairs({}, "NO_SUCH", 4, seed=0)
