from collections import Counter

import pytest
from transformers import AutoTokenizer

from circuitflow.errors import ConfigError
from circuitflow.tasks import arithmetic
from span_roles import roles_by_overlap

SMALL = {"n_digits": 3, "operations": ["sub"], "class_digit": 0}
TOP = {"n_digits": 4, "operations": ["add", "sub"], "class_digit": 3}
UNIFORM = {"n_digits": 4, "class_digit": 2, "balanced": False}


def _settings(options):
    defaults = {"n_digits": 6, "operations": ["add", "sub"], "class_digit": 3, "balanced": True}
    return defaults | options


def _parse(prompt: str, n: int) -> tuple[int, str, int]:
    assert len(prompt) == 2 * n + 2 and prompt[-1] == "=" and prompt[n] in "+-"
    return int(prompt[:n]), prompt[n], int(prompt[n + 1:2 * n + 1])


def _check_answer(answer: str, value: int, n: int) -> None:
    assert len(answer) == n + 2 and answer[1:].isdigit()
    assert answer[0] == ("-" if value < 0 else "+")
    assert int(answer) == value


def _digit(number: int, d: int) -> int:
    return int(str(number).zfill(20)[-1 - d])


@pytest.mark.parametrize("options", [{}, SMALL])
def test_same_seed_same_examples_other_seed_other(options):
    a = arithmetic.examples(options, 30, seed=3)
    assert a.equals(arithmetic.examples(options, 30, seed=3))
    assert list(a["example_id"]) == list(range(30))
    assert list(a["prompt"]) != list(arithmetic.examples(options, 30, seed=4)["prompt"])


@pytest.mark.parametrize("options", [{}, SMALL, TOP, UNIFORM])
def test_answers_are_int_arithmetic_and_classes_as_defined(options):
    s = _settings(options)
    n, d = s["n_digits"], s["class_digit"]
    df = arithmetic.examples(options, 120, seed=0)
    carried_into_d = 0
    for row in df.to_dict("records"):
        x, symbol, y = _parse(row["prompt"], n)
        assert (x, y) == (row["x"], row["y"])
        assert {"+": "add", "-": "sub"}[symbol] == row["operation"]
        value = x + y if symbol == "+" else x - y
        assert row["result"] == value
        _check_answer(row["answer"], value, n)
        x_d, y_d = _digit(x, d), _digit(y, d)
        low_x, low_y = x % 10**d, y % 10**d
        if symbol == "+":
            carried_into_d += low_x + low_y >= 10**d
            expected = "T8" if x_d + y_d < 9 else "T9" if x_d + y_d == 9 else "T10"
        else:
            carried_into_d += low_x < low_y  # a borrow from digit d
            expected = "T8" if x_d < y_d else "T9" if x_d == y_d else "T10"
        assert row["class"] == expected
        assert row["class_role"] == f"a_{d}"
    if not s["balanced"]:  # uniform operands: lower digits carry or borrow about half the time
        assert 20 < carried_into_d < 100
        return
    assert carried_into_d == 0
    cells = Counter(zip(df["operation"], df["class"]))
    assert set(cells) == {(op, c) for op in s["operations"] for c in ("T8", "T9", "T10")}
    assert max(cells.values()) - min(cells.values()) <= 1


def test_negative_results_occur():
    df = arithmetic.examples({}, 120, seed=0)
    assert (df["result"] < 0).any() and (df["result"] > 0).any()


@pytest.mark.parametrize("options", [{}, SMALL])
def test_spans_cover_every_character_and_roles_every_token(options):
    n = _settings(options)["n_digits"]
    tok = arithmetic.tokenizer({}, [], vocab_size=0)
    expected = ([f"x_{i}" for i in range(n - 1, -1, -1)] + ["op"]
                + [f"y_{i}" for i in range(n - 1, -1, -1)] + ["eq", "sign"]
                + [f"a_{i}" for i in range(n, -1, -1)])
    for row in arithmetic.examples(options, 30, seed=1).to_dict("records"):
        text = row["prompt"] + row["answer"]
        covered = sorted(p for sp in row["spans"] for p in range(sp["start"], sp["end"]))
        assert covered == list(range(len(text)))
        roles = roles_by_overlap(tok, row["prompt"], row["answer"], row["spans"])
        assert roles == expected
        # the role's digit is the operand's or the result's digit of that significance
        chars = dict(zip(roles, text))
        for i in range(n):
            assert int(chars[f"x_{i}"]) == _digit(row["x"], i)
            assert int(chars[f"y_{i}"]) == _digit(row["y"], i)
        for i in range(n + 1):
            assert int(chars[f"a_{i}"]) == _digit(abs(row["result"]), i)


def test_tokenizer_one_token_per_character_and_saved_copy(tmp_path):
    tok = arithmetic.tokenizer({}, ["ignored"], vocab_size=2048)
    assert len(tok) == 15  # 0-9 + - * = and EOS
    assert [tok.convert_tokens_to_ids(str(c)) for c in range(10)] == list(range(10))
    assert tok.eos_token == tok.pad_token == tok.bos_token == tok.unk_token == "<|endoftext|>"
    text = "133357+182243=+0315600"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert [text[s:e] for s, e in enc["offset_mapping"]] == list(text)
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == list(text)
    assert tok.decode(enc["input_ids"]) == text
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == enc["input_ids"]


@pytest.mark.parametrize("feature", arithmetic.FEATURES)
@pytest.mark.parametrize("options", [{}, SMALL])
def test_pairs_change_the_class_digit_and_the_answer(options, feature):
    s = _settings(options)
    n, d = s["n_digits"], s["class_digit"]
    df = arithmetic.pairs(options, feature, 60, seed=5)
    assert df.equals(arithmetic.pairs(options, feature, 60, seed=5))
    assert not df.equals(arithmetic.pairs(options, feature, 60, seed=6))
    tok = arithmetic.tokenizer({}, [], vocab_size=0)
    changed_at = n - 1 - d if feature == "X_DIGIT" else 2 * n - d  # the digit's character
    for row in df.to_dict("records"):
        assert roles_by_overlap(tok, row["clean_prompt"], row["clean_answer"], row["spans"])[n] == "op"
        x, symbol, y = _parse(row["clean_prompt"], n)
        cx, csymbol, cy = _parse(row["corrupt_prompt"], n)
        assert symbol == csymbol
        diff = [p for p, (a, b) in enumerate(zip(row["clean_prompt"], row["corrupt_prompt"]))
                if a != b]
        assert diff == [changed_at]
        _check_answer(row["clean_answer"], x + y if symbol == "+" else x - y, n)
        _check_answer(row["corrupt_answer"], cx + cy if symbol == "+" else cx - cy, n)
        assert row["clean_answer"] != row["corrupt_answer"]
        lengths = [len(tok(row[f"{side}_prompt"] + row[f"{side}_answer"])["input_ids"])
                   for side in ("clean", "corrupt")]
        assert lengths[0] == lengths[1]


def test_options_checked():
    with pytest.raises(ConfigError, match="class_digit"):
        arithmetic.examples({"n_digits": 3, "class_digit": 3}, 4, seed=0)
    with pytest.raises(ConfigError, match="operations"):
        arithmetic.examples({"operations": ["mul"]}, 4, seed=0)
    with pytest.raises(ConfigError, match="X_DIGIT"):
        arithmetic.pairs({}, "NO_SUCH", 4, seed=0)
