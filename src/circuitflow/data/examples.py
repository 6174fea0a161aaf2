"""TinySQL examples: English instruction, CREATE TABLE context, SQL response, and role spans.

CS1 is ``SELECT f1, f2 FROM t``; CS2 adds ``ORDER BY fa ASC, fb DESC``; CS3 adds aggregates
(``MAX(price) AS MAX_price``) to CS2. CS4 adds ``WHERE`` with 1-3 conditions to CS1 content,
with CS2's ORDER BY and CS3's aggregates each present half the time. CS5 joins a second table
(``FROM t JOIN u ON t.u_id = u.id``, with CS4's WHERE, the ORDER BY and the aggregates each
present half the time); only the keys are qualified by their table, as every other column name
belongs to one of the two. Each example records the character span of every piece that names
something (``spans``, over ``prompt + sql``), so that later stages can label tokens.
"""

from __future__ import annotations

import logging
import random
import re
from typing import NamedTuple

import pandas as pd
import pyarrow as pa

from circuitflow.data import phrasing
from circuitflow.data.vocabulary import (
    FIELDS, JOIN_KEY, TABLE_NAMES, TABLES, TEXT_VALUES, Field, allowed_aggregates, foreign_key,
    value_kind,
)
from circuitflow.errors import ConfigError

log = logging.getLogger(__name__)

COMMAND_SETS = ("cs1", "cs2", "cs3", "cs4", "cs5")
INSTRUCTION_MARKER = "### Instruction:"
CONTEXT_MARKER = "### Context:"
RESPONSE_MARKER = "### Response:"

TABLE_SYNONYM_P = 0.8  # chance the instruction names the table by a synonym, when enabled
FIELD_SYNONYM_P = 0.5  # chance, per field, that the instruction uses a synonym, when enabled
AGGREGATE_P = 0.5  # chance a selected field is aggregated in CS3 (at least one always is)
MAX_ORDER_FIELDS = 2
MAX_WHERE_CONDITIONS = 3
OR_P = 0.3  # chance a WHERE condition after the first is joined by OR rather than AND
EARLIER_CLAUSE_P = 0.5  # CS4/CS5: chance each clause of the earlier command sets is present

# Comparison (the key of phrasing.CONDITION_PHRASES) -> SQL operator and literal pattern.
SQL_COMPARISONS = {
    "=": ("=", "{}"), "!=": ("!=", "{}"), "<": ("<", "{}"), ">": (">", "{}"),
    "<=": ("<=", "{}"), ">=": (">=", "{}"),
    "contains": ("LIKE", "%{}%"), "starts with": ("LIKE", "{}%"), "ends with": ("LIKE", "%{}"),
}

_STRING_LIST = pa.list_(pa.string())
_COLUMNS = pa.list_(pa.struct([("name", pa.string()), ("type", pa.string())]))
SCHEMA = pa.schema(
    [
        ("example_id", pa.int64()),
        ("command_set", pa.string()),
        ("english", pa.string()),
        ("create_table", pa.string()),
        ("sql", pa.string()),
        ("prompt", pa.string()),
        ("table", pa.string()),
        ("columns", _COLUMNS),
        ("selected_fields", _STRING_LIST),
        ("order_by", pa.list_(pa.struct([("field", pa.string()), ("direction", pa.string())]))),
        ("aggregates", _STRING_LIST),
        ("table_synonym", pa.string()),
        ("field_synonyms", _STRING_LIST),
        ("where", pa.list_(pa.struct([("field", pa.string()), ("op", pa.string()),
                                      ("value", pa.string()), ("conjunction", pa.string())]))),
        ("join", pa.struct([
            ("table", pa.string()),
            ("table_synonym", pa.string()),
            ("columns", _COLUMNS),
            ("foreign_key", pa.string()),
            ("key", pa.string()),
        ])),
        ("spans", pa.list_(pa.struct([("role", pa.string()), ("start", pa.int64()),
                                      ("end", pa.int64())]))),
    ]
)


class Condition(NamedTuple):
    """One WHERE condition: ``field op value``, after ``conjunction`` unless it is the first."""

    field: Field
    comparison: str  # a key of phrasing.CONDITION_PHRASES[value_kind(field.type)]
    op: str
    value: str  # the SQL literal: 100, '%an%', '2021-03-04', TRUE
    english_value: str  # the literal as the instruction writes it: 100, 'an', 2021-03-04, true
    conjunction: str  # "" for the first condition, else "AND" or "OR"


class Join(NamedTuple):
    """CS5's second table: ``FROM t JOIN table ON t.foreign_key = table.key``."""

    table: str
    columns: list[Field]
    foreign_key: str  # a column of the FROM table


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

    def add_template(self, template: str, fill: dict, bracket_role: str | None = None) -> None:
        """Add ``template``: literal text, with each ``{name}`` handed to ``fill[name](self)``
        and the words in ``[...]`` added, without the brackets, as a span of ``bracket_role``."""
        for piece in re.split(r"(\{\w+\}|\[[^\]]+\])", template):
            if piece.startswith("{"):
                fill[piece[1:-1]](self)
            elif piece.startswith("["):
                self.add(piece[1:-1], bracket_role)
            else:
                self.add(piece)


def format_prompt(english: str, context: str) -> str:
    """The prompt template: instruction, context, then the response marker and one space."""
    return f"{INSTRUCTION_MARKER} {english} {CONTEXT_MARKER} {context} {RESPONSE_MARKER} "


def english_word(rng: random.Random, name: str, synonyms: tuple[str, str], p: float) -> str:
    return rng.choice(synonyms) if rng.random() < p else name


def _filler(piece: str, role: str):
    """A ``fill`` entry of ``_Text.add_template``: adds ``piece`` as a span of ``role``."""
    return lambda text: text.add(piece, role)


def _english(
    rng: random.Random,
    template: str,
    table_word: str,
    selected: list[Field],
    words: dict[str, str],
    aggregates: list[str],
    order_by: list[tuple[Field, str]],
    where: list[Condition],
    join_word: str | None,
) -> _Text:
    """The instruction: the select (or join) template filled in, then the WHERE phrase and the
    ORDER BY phrase, if any."""
    def fill_fields(text: _Text) -> None:
        separators = phrasing.list_separators(len(selected))
        for k, (separator, field, aggregate) in enumerate(zip(separators, selected, aggregates), 1):
            text.add(separator)
            word = _filler(words[field.name], f"eng_field_{k}")
            if aggregate:
                phrase = rng.choice(phrasing.AGGREGATE_PHRASES[aggregate])
                text.add_template(phrase, {"field": word}, f"eng_agg_{k}")
            else:
                word(text)

    fill = {"table": _filler(table_word, "eng_table"), "fields": fill_fields}
    if join_word is not None:
        fill["table_2"] = _filler(join_word, "eng_table_2")
    english = _Text()
    english.add_template(template, fill)
    if where:
        english.add(f" {rng.choice(phrasing.WHERE_LEADS)} ")
        for k, condition in enumerate(where, 1):
            if k > 1:
                english.add(" ")
                english.add(condition.conjunction.lower(), f"eng_where_conj_{k}")
                english.add(" ")
            english.add(words[condition.field.name], f"eng_where_field_{k}")
            english.add(" ")
            kind = value_kind(condition.field.type)
            phrase = rng.choice(phrasing.CONDITION_PHRASES[kind][condition.comparison])
            value = _filler(condition.english_value, f"eng_where_value_{k}")
            english.add_template(phrase, {"value": value}, f"eng_where_op_{k}")
    if order_by:
        english.add(f" {rng.choice(phrasing.ORDER_LEADS)} ")
        for k, (field, direction) in enumerate(order_by, 1):
            if k > 1:
                english.add(phrasing.ORDER_ITEM_SEPARATOR)
            english.add(words[field.name], f"eng_order_field_{k}")
            english.add(" ")
            english.add(rng.choice(phrasing.DIRECTION_PHRASES[direction]), f"eng_order_dir_{k}")
    return english


def create_table_text(table: str, columns: list[Field], number: int = 1) -> _Text:
    """``CREATE TABLE``; the roles of the ``number``-th statement of the context from the second
    on carry ``_{number}``: ``def_table_2``, ``def_field_2_{j}``."""
    suffix = "" if number == 1 else f"_{number}"
    context = _Text()
    context.add("CREATE TABLE ")
    context.add(table, f"def_table{suffix}")
    context.add(" ( ")
    for j, field in enumerate(columns, 1):
        if j > 1:
            context.add(", ")
        context.add(field.name, f"def_field{suffix}_{j}")
        context.add(" ")
        context.add(field.type, f"def_type{suffix}_{j}")
    context.add(" )")
    return context


def sql_text(
    table: str,
    selected: list[Field],
    aggregates: list[str],
    order_by: list[tuple[Field, str]],
    where: list[Condition] = (),
    join: Join | None = None,
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
    if join is not None:
        sql.add(" JOIN ")
        sql.add(join.table, "sql_join_table")
        sql.add(" ON ")
        sql.add(table, "sql_join_on_table_1")
        sql.add(".")
        sql.add(join.foreign_key, "sql_join_on_field_1")
        sql.add(" = ")
        sql.add(join.table, "sql_join_on_table_2")
        sql.add(".")
        sql.add(JOIN_KEY.name, "sql_join_on_field_2")
    if where:
        sql.add(" WHERE ")
        for k, condition in enumerate(where, 1):
            if k > 1:
                sql.add(" ")
                sql.add(condition.conjunction, f"sql_where_conj_{k}")
                sql.add(" ")
            sql.add(condition.field.name, f"sql_where_field_{k}")
            sql.add(" ")
            sql.add(condition.op, f"sql_where_op_{k}")
            sql.add(" ")
            sql.add(condition.value, f"sql_where_value_{k}")
    if order_by:
        sql.add(" ORDER BY ")
        for k, (field, direction) in enumerate(order_by, 1):
            if k > 1:
                sql.add(", ")
            sql.add(field.name, f"sql_order_field_{k}")
            sql.add(" ")
            sql.add(direction, f"sql_order_dir_{k}")
    return sql


def _literals(rng: random.Random, sql_type: str, pattern: str) -> tuple[str, str]:
    """(SQL literal, English literal) of a random value to compare a ``sql_type`` column with;
    ``pattern`` places a text value in its LIKE pattern."""
    kind = value_kind(sql_type)
    if kind == "number":
        if sql_type == "DECIMAL(10,2)":
            number = f"{rng.randint(0, 999)}.{rng.randint(0, 99):02d}"
        else:
            number = str(rng.randint(0, 1000))
        return number, number
    if kind == "date":
        day = f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        return f"'{day}'", day
    if kind == "boolean":
        truth = rng.choice(("TRUE", "FALSE"))
        return truth, truth.lower()
    word = rng.choice(TEXT_VALUES)
    return f"'{pattern.format(word)}'", f"'{word}'"


def _conditions(rng: random.Random, usable: list[Field]) -> list[Condition]:
    """1 to MAX_WHERE_CONDITIONS conditions on distinct columns, each fitting its column's type."""
    n_conditions = rng.randint(1, min(MAX_WHERE_CONDITIONS, len(usable)))
    conditions = []
    for k, field in enumerate(rng.sample(usable, n_conditions)):
        conjunction = "" if k == 0 else ("OR" if rng.random() < OR_P else "AND")
        comparison = rng.choice(tuple(phrasing.CONDITION_PHRASES[value_kind(field.type)]))
        op, pattern = SQL_COMPARISONS[comparison]
        value, english_value = _literals(rng, field.type, pattern)
        conditions.append(Condition(field, comparison, op, value, english_value, conjunction))
    return conditions


def _example(
    rng: random.Random,
    command_set: str,
    min_cols: int,
    max_cols: int,
    table_synonym_p: float,
    field_synonym_p: float,
) -> dict:
    # The draws of CS1-CS3 come first and in a fixed order, so their examples stay as they were
    # before CS4 and CS5 existed.
    table = rng.choice(TABLE_NAMES)
    join_table = None
    pool = FIELDS
    if command_set == "cs5":
        join_table = rng.choice([t for t in TABLE_NAMES if t != table])
        keys = {JOIN_KEY.name, foreign_key(join_table)}
        pool = [f for f in FIELDS if f.name not in keys]
    columns = rng.sample(pool, rng.randint(min_cols, max_cols))
    # The columns the clauses draw on: in CS5 those of both tables but their keys.
    usable = list(columns)
    if join_table is not None:
        others = [f for f in pool if f not in columns]
        join_columns = rng.sample(others, rng.randint(min_cols, max_cols))
        usable += join_columns
    selected = rng.sample(usable, rng.randint(1, len(usable)))

    later = command_set in ("cs4", "cs5")
    order_by = []
    if command_set in ("cs2", "cs3") or (later and rng.random() < EARLIER_CLAUSE_P):
        n_order = rng.randint(1, min(MAX_ORDER_FIELDS, len(usable)))
        order_by = [(field, rng.choice(("ASC", "DESC"))) for field in rng.sample(usable, n_order)]

    aggregates = [""] * len(selected)
    if command_set == "cs3" or (later and rng.random() < EARLIER_CLAUSE_P):
        aggregated = [k for k in range(len(selected)) if rng.random() < AGGREGATE_P]
        for k in aggregated or [rng.randrange(len(selected))]:
            aggregates[k] = rng.choice(allowed_aggregates(selected[k].type))

    where = []
    if command_set == "cs4" or (command_set == "cs5" and rng.random() < EARLIER_CLAUSE_P):
        where = _conditions(rng, usable)

    table_word = english_word(rng, table, TABLES[table], table_synonym_p)
    join = join_word = None
    if join_table is not None:
        join_word = english_word(rng, join_table, TABLES[join_table], table_synonym_p)
        key = foreign_key(join_table)
        columns.insert(rng.randint(0, len(columns)), Field(key, JOIN_KEY.type, ()))
        join = Join(join_table, [JOIN_KEY] + join_columns, key)
    # One English word per column, so a field selected and sorted on reads the same both times.
    words = {f.name: english_word(rng, f.name, f.synonyms, field_synonym_p) for f in usable}
    template = rng.choice(phrasing.JOIN_TEMPLATES if join else phrasing.SELECT_TEMPLATES)
    english = _english(
        rng, template, table_word, selected, words, aggregates, order_by, where, join_word
    )
    context = create_table_text(table, columns)
    if join is not None:
        context.add("; ")
        context.extend(create_table_text(join.table, join.columns, number=2))
    sql = sql_text(table, selected, aggregates, order_by, where, join)

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
        "columns": _column_rows(columns),
        "selected_fields": [f.name for f in selected],
        "order_by": [{"field": f.name, "direction": d} for f, d in order_by],
        "aggregates": aggregates,
        "table_synonym": table_word,
        "field_synonyms": [words[f.name] for f in selected],
        "where": [
            {"field": c.field.name, "op": c.op, "value": c.value, "conjunction": c.conjunction}
            for c in where
        ],
        "join": None if join is None else {
            "table": join.table,
            "table_synonym": join_word,
            "columns": _column_rows(join.columns),
            "foreign_key": join.foreign_key,
            "key": JOIN_KEY.name,
        },
        "spans": full.spans,  # in text order: pieces are added left to right
    }


def _column_rows(columns: list[Field]) -> list[dict]:
    return [{"name": f.name, "type": f.type} for f in columns]


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
    max_join_cols = (len(FIELDS) - 2) // 2  # two tables' columns, keys aside, all distinct
    if command_set == "cs5" and max_cols > max_join_cols:
        raise ConfigError(
            f"data.max_cols: cs5 gives each of its two tables up to max_cols columns besides its"
            f" key; need max_cols <= {max_join_cols}, got {max_cols}"
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
