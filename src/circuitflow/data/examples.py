"""TinySQL examples: English instruction, CREATE TABLE context, SQL response, and role spans.

CS1 is ``SELECT f1, f2 FROM t``; CS2 adds ``ORDER BY fa ASC, fb DESC``; CS3 adds aggregates
(``MAX(price) AS MAX_price``) to CS2. Each example records the character span of every piece
that names something (``spans``, over ``prompt + sql``), so that later stages can label tokens.
"""

from __future__ import annotations

import logging
import random
import re

import pandas as pd
import pyarrow as pa

from circuitflow.data import phrasing
from circuitflow.data.vocabulary import (
    FIELDS, TABLE_NAMES, TABLES, Field, allowed_aggregates,
)
from circuitflow.errors import ConfigError
from circuitflow.tables import write_table

log = logging.getLogger(__name__)

COMMAND_SETS = ("cs1", "cs2", "cs3")
INSTRUCTION_MARKER = "### Instruction:"
CONTEXT_MARKER = "### Context:"
RESPONSE_MARKER = "### Response:"

TABLE_SYNONYM_P = 0.8  # chance the instruction names the table by a synonym, when enabled
FIELD_SYNONYM_P = 0.5  # chance, per field, that the instruction uses a synonym, when enabled
AGGREGATE_P = 0.5  # chance a selected field is aggregated in CS3 (at least one always is)
MAX_ORDER_FIELDS = 2

_STRING_LIST = pa.list_(pa.string())
SCHEMA = pa.schema(
    [
        ("example_id", pa.int64()),
        ("command_set", pa.string()),
        ("english", pa.string()),
        ("create_table", pa.string()),
        ("sql", pa.string()),
        ("prompt", pa.string()),
        ("table", pa.string()),
        ("columns", pa.list_(pa.struct([("name", pa.string()), ("type", pa.string())]))),
        ("selected_fields", _STRING_LIST),
        ("order_by", pa.list_(pa.struct([("field", pa.string()), ("direction", pa.string())]))),
        ("aggregates", _STRING_LIST),
        ("table_synonym", pa.string()),
        ("field_synonyms", _STRING_LIST),
        ("spans", pa.list_(pa.struct([("role", pa.string()), ("start", pa.int64()),
                                      ("end", pa.int64())]))),
    ]
)



class _Text:
    """A string built piece by piece, remembering the character span of each named piece."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: list[dict] = []

    def add(self, piece: str, role: str | None = None) -> None:
        if role is not None:
            start = len(self.text)
            self.spans.append({"role": role, "start": start, "end": start + len(piece)})
        self.text += piece

    def extend(self, other: _Text) -> None:
        offset = len(self.text)
        for span in other.spans:
            start, end = span["start"] + offset, span["end"] + offset
            self.spans.append({**span, "start": start, "end": end})
        self.text += other.text

    def add_template(self, template: str, fill: dict) -> None:
        """Add ``template``: literal text, with each ``{name}`` handed to ``fill[name](self)``."""
        for piece in re.split(r"(\{\w+\})", template):
            if piece.startswith("{"):
                fill[piece[1:-1]](self)
            else:
                self.add(piece)


def format_prompt(english: str, context: str) -> str:
    """The prompt template: instruction, context, then the response marker and one space."""
    return f"{INSTRUCTION_MARKER} {english} {CONTEXT_MARKER} {context} {RESPONSE_MARKER} "


def english_word(rng: random.Random, name: str, synonyms: tuple[str, str], p: float) -> str:
    return rng.choice(synonyms) if rng.random() < p else name


def _english(
    rng: random.Random,
    template: str,
    table_word: str,
    selected: list[Field],
    words: dict[str, str],
    aggregates: list[str],
    order_by: list[tuple[Field, str]],
) -> _Text:
    """The instruction: the select template filled in, then the ORDER BY phrase, if any."""
    def fill_table(text: _Text) -> None:
        text.add(table_word, "eng_table")

    def fill_fields(text: _Text) -> None:
        separators = phrasing.list_separators(len(selected))
        for k, (separator, field, aggregate) in enumerate(zip(separators, selected, aggregates), 1):
            text.add(separator)
            if not aggregate:
                text.add(words[field.name], f"eng_field_{k}")
                continue
            phrase = rng.choice(phrasing.AGGREGATE_PHRASES[aggregate])
            for piece in re.split(r"(\[[^\]]+\]|\{field\})", phrase):
                if piece == "{field}":
                    text.add(words[field.name], f"eng_field_{k}")
                elif piece.startswith("["):
                    text.add(piece[1:-1], f"eng_agg_{k}")
                else:
                    text.add(piece)

    english = _Text()
    english.add_template(template, {"table": fill_table, "fields": fill_fields})
    if order_by:
        english.add(f" {rng.choice(phrasing.ORDER_LEADS)} ")
        for k, (field, direction) in enumerate(order_by, 1):
            if k > 1:
                english.add(phrasing.ORDER_ITEM_SEPARATOR)
            english.add(words[field.name], f"eng_order_field_{k}")
            english.add(" ")
            english.add(rng.choice(phrasing.DIRECTION_PHRASES[direction]), f"eng_order_dir_{k}")
    return english


def create_table_text(table: str, columns: list[Field]) -> _Text:
    context = _Text()
    context.add("CREATE TABLE ")
    context.add(table, "def_table")
    context.add(" ( ")
    for j, field in enumerate(columns, 1):
        if j > 1:
            context.add(", ")
        context.add(field.name, f"def_field_{j}")
        context.add(" ")
        context.add(field.type, f"def_type_{j}")
    context.add(" )")
    return context


def sql_text(
    table: str, selected: list[Field], aggregates: list[str], order_by: list[tuple[Field, str]]
) -> _Text:
    sql = _Text()
    sql.add("SELECT ")
    for k, (field, aggregate) in enumerate(zip(selected, aggregates), 1):
        if k > 1:
            sql.add(", ")
        if aggregate:
            sql.add(aggregate, f"sql_agg_{k}")
            sql.add("(")
            sql.add(field.name, f"sql_field_{k}")
            sql.add(") AS ")
            sql.add(f"{aggregate}_{field.name}", f"sql_alias_{k}")
        else:
            sql.add(field.name, f"sql_field_{k}")
    sql.add(" FROM ")
    sql.add(table, "sql_table")
    if order_by:
        sql.add(" ORDER BY ")
        for k, (field, direction) in enumerate(order_by, 1):
            if k > 1:
                sql.add(", ")
            sql.add(field.name, f"sql_order_field_{k}")
            sql.add(" ")
            sql.add(direction, f"sql_order_dir_{k}")
    return sql


def _example(
    rng: random.Random,
    command_set: str,
    min_cols: int,
    max_cols: int,
    table_synonym_p: float,
    field_synonym_p: float,
) -> dict:
    table = rng.choice(TABLE_NAMES)
    columns = rng.sample(FIELDS, rng.randint(min_cols, max_cols))
    selected = rng.sample(columns, rng.randint(1, len(columns)))

    order_by = []
    if command_set in ("cs2", "cs3"):
        n_order = rng.randint(1, min(MAX_ORDER_FIELDS, len(columns)))
        order_by = [(field, rng.choice(("ASC", "DESC"))) for field in rng.sample(columns, n_order)]

    aggregates = [""] * len(selected)
    if command_set == "cs3":
        aggregated = [k for k in range(len(selected)) if rng.random() < AGGREGATE_P]
        for k in aggregated or [rng.randrange(len(selected))]:
            aggregates[k] = rng.choice(allowed_aggregates(selected[k].type))

    # One English word per column, so a field selected and sorted on reads the same both times.
    table_word = english_word(rng, table, TABLES[table], table_synonym_p)
    words = {f.name: english_word(rng, f.name, f.synonyms, field_synonym_p) for f in columns}
    template = rng.choice(phrasing.SELECT_TEMPLATES)
    english = _english(rng, template, table_word, selected, words, aggregates, order_by)
    context = create_table_text(table, columns)
    sql = sql_text(table, selected, aggregates, order_by)

    full = _Text()
    full.add(f"{INSTRUCTION_MARKER} ")
    full.extend(english)
    full.add(f" {CONTEXT_MARKER} ")
    full.extend(context)
    full.add(f" {RESPONSE_MARKER} ")
    prompt = full.text
    full.extend(sql)
    return {
        "command_set": command_set,
        "english": english.text,
        "create_table": context.text,
        "sql": sql.text,
        "prompt": prompt,
        "table": table,
        "columns": [{"name": f.name, "type": f.type} for f in columns],
        "selected_fields": [f.name for f in selected],
        "order_by": [{"field": f.name, "direction": d} for f, d in order_by],
        "aggregates": aggregates,
        "table_synonym": table_word,
        "field_synonyms": [words[f.name] for f in selected],
        "spans": full.spans,  # in text order: pieces are added left to right
    }


def generate_examples(
    command_set: str,
    n_examples: int,
    seed: int,
    min_cols: int = 2,
    max_cols: int = 4,
    use_synonyms_table: bool = False,
    use_synonyms_field: bool = False,
) -> pd.DataFrame:
    """``n_examples`` examples of ``command_set``; the same arguments give the same table.

    The random stream is seeded with both ``seed`` and ``command_set``, so command sets drawn
    with one seed do not share choices.
    """
    if command_set not in COMMAND_SETS:
        raise ConfigError(
            f"command_set: unknown {command_set!r}; expected one of {', '.join(COMMAND_SETS)}"
        )
    if not 1 <= min_cols <= max_cols <= len(FIELDS):
        raise ConfigError(
            f"data.min_cols/max_cols: need 1 <= min_cols <= max_cols <= {len(FIELDS)}"
            f" (the number of field names), got {min_cols} and {max_cols}"
        )
    # random.Random seeds a string through SHA-512: stable across runs, unlike hash().
    rng = random.Random(f"{seed}/{command_set}")
    table_synonym_p = TABLE_SYNONYM_P if use_synonyms_table else 0.0
    field_synonym_p = FIELD_SYNONYM_P if use_synonyms_field else 0.0
    rows = []
    for example_id in range(n_examples):
        example = _example(rng, command_set, min_cols, max_cols, table_synonym_p, field_synonym_p)
        rows.append({"example_id": example_id, **example})
        if (example_id + 1) % 10000 == 0:
            log.info("%s: %d of %d examples", command_set, example_id + 1, n_examples)
    return pd.DataFrame(rows, columns=SCHEMA.names)


def run_stage(params: dict, out: str) -> None:
    data = params["data"]
    df = generate_examples(
        params["command_set"],
        n_examples=data["n_examples"],
        seed=data["seed"],
        min_cols=data["min_cols"],
        max_cols=data["max_cols"],
        use_synonyms_table=data["use_synonyms_table"],
        use_synonyms_field=data["use_synonyms_field"],
    )
    write_table(df, out, schema=SCHEMA)
    log.info("wrote %d %s examples to %s", len(df), params["command_set"], out)
