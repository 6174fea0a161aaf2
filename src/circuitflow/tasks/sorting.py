"""Sorting (seed 003): ``START x_1 ... x_n STOP`` answered by the sorted values.

Tokens are whole words: ``START``, ``STOP`` and the numbers ``0``..``max_value``; the answer is
``" " + " ".join(sorted(x))``. Roles: ``start``, ``in_{i}`` (the i-th input value, 1-based),
``stop``, ``out_{k}`` (the k-th sorted value); each word's span takes the space before it, so
the spans cover every character.

Class: whether output ``class_output`` (k) repeats output k-1 (``repeat``) or not (``new``),
about role ``out_{k}`` (the model predicts it at the position of ``out_{k-1}``). The two classes
are balanced (each example drawn uniformly among the sequences of its class), unless
``balanced`` is false: then the sequences are uniform, as a model should be trained on.
"""

from __future__ import annotations

import random

import pandas as pd
import pyarrow as pa
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from circuitflow.errors import ConfigError, OptionError

EOS = "<|endoftext|>"
START, STOP = "START", "STOP"
CLASSES = ("repeat", "new")

OPTIONS = {
    "length": {"type": "integer", "minimum": 2, "default": 20,
               "description": "number of values to sort"},
    "max_value": {"type": "integer", "minimum": 1, "default": 29,
                  "description": "values are drawn from 0..max_value"},
    "class_output": {"type": "integer", "minimum": 2, "default": 10,
                     "description": "output k whose repeat/new case is the class (2..length)"},
    "balanced": {"type": "boolean", "default": True,
                 "description": "as many repeat as new examples (false: uniform sequences)"},
}
FEATURES = ("INPUT_VALUE",)
PAIRS_GIVEN = False
COLUMNS = [pa.field("values", pa.list_(pa.int64()))]
# The seed's model (1 layer, d_head 32, attention only) with its two heads; the trainer keeps the
# MLP at zero. n_ctx covers START, 20 inputs, STOP, 20 outputs and EOS.
MODEL = {
    "n_layers": 1, "n_heads": 2, "d_model": 64, "n_ctx": 48, "attn_only": True,
    # About 1.5 minutes on one CPU thread to 99% of sorted tokens right (85% of answers exact;
    # 7,000 steps reach 97% exact in twice the time, docs/benchmarks.md).
    "max_steps": 4000, "eval_every": 500, "early_stop_accuracy": 0.98,
}


def settings(options: dict) -> dict:
    """The options with their defaults, checked together."""
    options = {name: spec["default"] for name, spec in OPTIONS.items()} | dict(options)
    if not 2 <= options["class_output"] <= options["length"]:
        raise OptionError(
            "class_output",
            f"must be between 2 and 'length' ({options['length']}), got {options['class_output']}",
        )
    return options


def _text(values: list[int]) -> tuple[str, str, list[dict]]:
    """Prompt, answer and role spans of one sequence."""
    words = [(START, "start")] + [(str(v), f"in_{i}") for i, v in enumerate(values, 1)]
    words.append((STOP, "stop"))
    words += [(str(v), f"out_{k}") for k, v in enumerate(sorted(values), 1)]
    n_prompt = len(values) + 2
    prompt = " ".join(word for word, _ in words[:n_prompt])
    answer = "".join(" " + word for word, _ in words[n_prompt:])
    spans, start = [], 0
    for index, (word, role) in enumerate(words):
        end = start + len(word) + (index > 0)  # the word and the space before it
        spans.append({"role": role, "start": start, "end": end})
        start = end
    return prompt, answer, spans


def _class(values: list[int], k: int) -> str:
    ordered = sorted(values)
    return "repeat" if ordered[k - 1] == ordered[k - 2] else "new"


def _draw(rng: random.Random, options: dict) -> list[int]:
    return [rng.randint(0, options["max_value"]) for _ in range(options["length"])]


def has_classes(options: dict) -> bool:
    return True


def examples(options: dict, n: int, seed: int) -> pd.DataFrame:
    """``n`` sequences; balanced: ``repeat`` and ``new`` in turn, in a shuffled order."""
    options = settings(options)
    k = options["class_output"]
    # random.Random seeds a string through SHA-512: stable across runs, unlike hash().
    rng = random.Random(f"sorting/examples/{seed}")
    classes = [CLASSES[i % 2] for i in range(n)]
    rng.shuffle(classes)
    rows = []
    for example_id, wanted in enumerate(classes):
        # Rejection keeps each class's sequences uniform; "new" needs max_value >= 1 (OPTIONS).
        values = _draw(rng, options)
        while options["balanced"] and _class(values, k) != wanted:
            values = _draw(rng, options)
        prompt, answer, spans = _text(values)
        rows.append({
            "example_id": example_id, "prompt": prompt, "answer": answer, "spans": spans,
            "class": _class(values, k), "class_role": f"out_{k}", "values": values,
        })
    return pd.DataFrame(rows)


def pairs(options: dict, feature: str, n: int, seed: int) -> pd.DataFrame:
    """INPUT_VALUE: one input value replaced by another, which always changes the sorted answer."""
    if feature not in FEATURES:
        raise ConfigError(f"sorting feature {feature!r}: expected one of {', '.join(FEATURES)}")
    options = settings(options)
    rng = random.Random(f"sorting/pairs/{feature}/{seed}")
    rows = []
    for _ in range(n):
        clean = _draw(rng, options)
        position = rng.randrange(len(clean))
        value = rng.randint(0, options["max_value"] - 1)  # any value but the clean one
        value += value >= clean[position]
        corrupt = clean[:position] + [value] + clean[position + 1:]
        clean_prompt, clean_answer, spans = _text(clean)
        corrupt_prompt, corrupt_answer, _ = _text(corrupt)
        rows.append({
            "clean_prompt": clean_prompt, "clean_answer": clean_answer, "spans": spans,
            "corrupt_prompt": corrupt_prompt, "corrupt_answer": corrupt_answer,
            "changed_input": position + 1, "clean_value": clean[position], "corrupt_value": value,
        })
    return pd.DataFrame(rows)


def tokenizer(options: dict, texts, vocab_size: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: the number v is token v (0..max_value), then START, STOP and EOS,
    as in the seed (values 0..29, START 30, STOP 31). The vocabulary is fixed by the options:
    ``texts`` and ``vocab_size`` are not used."""
    largest = settings(options)["max_value"]
    vocab = {str(v): v for v in range(largest + 1)}
    vocab |= {START: largest + 1, STOP: largest + 2, EOS: largest + 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS
    )
