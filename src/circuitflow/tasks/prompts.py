"""Your own prompts: a table of prompt and answer, analysed with a model of your own.

The table (``path``: Parquet, CSV or JSONL) has the columns ``prompt`` and ``answer`` (the
answer as the model should continue the prompt, e.g. ``" 13"`` after ``"1 3 5 7 9 11"``), and
optionally ``class`` (a label per row) and ``corrupt_prompt`` with ``corrupt_answer`` (a pair for
EAP and pruning: the corrupt prompt must have as many tokens as the prompt). Roles are the
whitespace-separated words: ``prompt_{i}`` and ``answer_{k}`` (1-based), each word's span taking
the space before it; the class is about ``answer_1``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from circuitflow.errors import ConfigError, OptionError, TableError

OPTIONS = {
    "path": {"type": "string", "minLength": 1,
             "description": "the table of prompts (.parquet, .csv or .jsonl)"},
}
FEATURES = ("CORRUPT",)
MODEL = None  # analysed with a local or hub model
PAIRS_GIVEN = True  # the user's own pairs: each must pass the pair checks
COLUMNS = []
# Text stays text: " 13" is an answer, not the number 13.
READERS = {
    ".parquet": pd.read_parquet,
    ".csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
    ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
}


def settings(options: dict) -> dict:
    if "path" not in options:
        raise OptionError("path", "missing: the table of prompts (.parquet, .csv or .jsonl)")
    return dict(options)


def _given(value) -> bool:
    """A cell that holds text (CSV writes an absent one as "", JSON as null)."""
    return isinstance(value, str) and value != ""


def read_prompts(path: str) -> pd.DataFrame:
    """The table at ``path``, checked: every row has a prompt and a non-empty answer, and a
    corrupt answer wherever it has a corrupt prompt."""
    file = Path(path)
    if file.suffix not in READERS:
        raise OptionError("path", f"{path} should end in {', '.join(READERS)}")
    if not file.is_file():
        raise TableError(f"{path}: file not found (dataset option 'path')")
    try:
        table = READERS[file.suffix](file)
    except (ValueError, OSError) as e:
        raise TableError(f"{path}: not a readable {file.suffix} table ({e})") from e
    missing = [c for c in ("prompt", "answer") if c not in table.columns]
    if missing:
        raise TableError(
            f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(map(str, table.columns))}"
        )
    if ("corrupt_prompt" in table.columns) != ("corrupt_answer" in table.columns):
        raise TableError(f"{path}: corrupt_prompt and corrupt_answer come together")
    for row, record in enumerate(table.itertuples()):
        if not isinstance(record.prompt, str) or not record.prompt:
            raise TableError(f"{path}: row {row}: empty prompt")
        if not isinstance(record.answer, str) or not record.answer:
            raise TableError(f"{path}: row {row}: empty answer")
        corrupt = getattr(record, "corrupt_prompt", None)
        if _given(corrupt) and not _given(record.corrupt_answer):
            raise TableError(f"{path}: row {row}: corrupt_prompt without a corrupt_answer")
    return table.reset_index(drop=True)


def word_spans(prompt: str, answer: str) -> list[dict]:
    spans, start = [], 0
    text = prompt + answer
    for part, first, end in (("prompt", 0, len(prompt)), ("answer", len(prompt), len(text))):
        for i, word in enumerate(text[first:end].split(), 1):
            at = text.index(word, start)
            spans.append({"role": f"{part}_{i}", "start": start, "end": at + len(word)})
            start = at + len(word)
        if spans:
            spans[-1]["end"] = end  # trailing spaces belong to the last word
            start = end
    return spans


def has_classes(options: dict) -> bool:
    return "class" in read_prompts(options["path"]).columns


def examples(options: dict, n: int, seed: int) -> pd.DataFrame:
    table = read_prompts(options["path"]).head(n)
    has_class = "class" in table.columns
    return pd.DataFrame({
        "example_id": range(len(table)),
        "prompt": table["prompt"],
        "answer": table["answer"],
        "spans": [word_spans(p, a) for p, a in zip(table["prompt"], table["answer"])],
        "class": table["class"].astype(str) if has_class else None,
        "class_role": "answer_1" if has_class else None,
    })


def pairs(options: dict, feature: str, n: int, seed: int) -> pd.DataFrame:
    table = read_prompts(options["path"])
    if "corrupt_prompt" not in table.columns:
        raise TableError(
            f"{options['path']}: no corrupt_prompt/corrupt_answer columns, so no pairs for EAP "
            "or pruning; add them, or leave this dataset out of those analyses"
        )
    table = table[table["corrupt_prompt"].map(_given)].head(n)
    return pd.DataFrame({
        "source_row": table.index,
        "clean_prompt": table["prompt"], "clean_answer": table["answer"],
        "corrupt_prompt": table["corrupt_prompt"], "corrupt_answer": table["corrupt_answer"],
        "spans": [word_spans(p, a) for p, a in zip(table["prompt"], table["answer"])],
    })


def tokenizer(options: dict, texts, vocab_size: int):
    raise ConfigError("task prompts has no built-in model: analyse it with a local or hub model")
