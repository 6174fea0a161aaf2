import re
import sqlite3
from collections import Counter

import pandas as pd
import pyarrow.parquet as pq
import pytest

from circuitflow.data import phrasing
from circuitflow.data.examples import COMMAND_SETS, SCHEMA, generate_examples, run_stage
from circuitflow.data.vocabulary import (
    DATE_TYPES,
    FIELDS,
    NUMERIC_TYPES,
    OTHER_TYPES,
    TABLES,
    allowed_aggregates,
)
from circuitflow.errors import ConfigError

FIELD_TYPES = {f.name: f.type for f in FIELDS}
N_PER_SET = 1000


@pytest.fixture(scope="module")
def with_synonyms():
    """1000 examples of each command set, synonyms on: 3000 in all."""
    return {
        cs: generate_examples(
            cs, N_PER_SET, seed=11, use_synonyms_table=True, use_synonyms_field=True
        )
        for cs in COMMAND_SETS
    }


@pytest.fixture(scope="module")
def without_synonyms():
    return {cs: generate_examples(cs, 300, seed=12) for cs in COMMAND_SETS}


def all_rows(frames):
    return [row for df in frames.values() for row in df.itertuples(index=False)]


def bracketed(phrase):
    return re.findall(r"\[([^\]]+)\]", phrase)


# -- vocabulary and phrasing ------------------------------------------------------------------


def test_vocabulary_sizes_and_two_distinct_synonyms():
    assert len(TABLES) >= 150
    assert len(FIELDS) >= 200
    for name, synonyms in list(TABLES.items()) + [(f.name, f.synonyms) for f in FIELDS]:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", name), name
        assert len(synonyms) == 2 and len(set(synonyms)) == 2, name
        for synonym in synonyms:
            assert synonym != name and re.fullmatch(r"[a-z]+( [a-z]+)*", synonym), (name, synonym)
    assert {f.type for f in FIELDS} <= set(NUMERIC_TYPES + DATE_TYPES + OTHER_TYPES)


def test_every_word_names_one_thing():
    words = list(TABLES) + [s for v in TABLES.values() for s in v]
    words += [f.name for f in FIELDS] + [s for f in FIELDS for s in f.synonyms]
    assert [w for w, n in Counter(words).items() if n > 1] == []


def test_synonyms_avoid_the_words_of_clause_phrases():
    clause_words = {"and", "then"} | {w for lead in phrasing.ORDER_LEADS for w in lead.split()}
    for phrases in phrasing.AGGREGATE_PHRASES.values():
        clause_words |= {w for p in phrases for b in bracketed(p) for w in b.split()}
    for phrases in phrasing.DIRECTION_PHRASES.values():
        clause_words |= {w for p in phrases for w in p.split()}
    clause_words -= {"of", "for", "in", "to", "from", "the", "with"}  # glue words in synonyms
    synonyms = [s for v in TABLES.values() for s in v] + [s for f in FIELDS for s in f.synonyms]
    assert [s for s in synonyms if set(s.split()) & clause_words] == []


def test_all_names_are_valid_sqlite_identifiers():
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE TABLE probe ( {', '.join(f'{f.name} {f.type}' for f in FIELDS)} )")
    for table in TABLES:
        db.execute(f"CREATE TABLE {table} ( id INTEGER )")


def test_aggregates_depend_on_type():
    assert allowed_aggregates("DECIMAL(10,2)") == ("SUM", "AVG", "MIN", "MAX", "COUNT")
    assert "SUM" not in allowed_aggregates("DATE") and "MAX" in allowed_aggregates("TIMESTAMP")
    assert allowed_aggregates("TEXT") == ("COUNT",)


def test_at_least_twenty_phrasings_per_clause_kind():
    aggregate_phrases = [p for ps in phrasing.AGGREGATE_PHRASES.values() for p in ps]
    direction_phrases = [p for ps in phrasing.DIRECTION_PHRASES.values() for p in ps]
    kinds = (phrasing.SELECT_TEMPLATES, aggregate_phrases, phrasing.ORDER_LEADS, direction_phrases)
    for phrases in kinds:
        assert len(phrases) >= 20 and len(set(phrases)) == len(phrases)
    for template in phrasing.SELECT_TEMPLATES:
        assert template.count("{fields}") == 1 and template.count("{table}") == 1
    for phrase in aggregate_phrases:
        assert phrase.count("{field}") == 1 and len(bracketed(phrase)) == 1
    # An aggregate wording names one function only (directions: distinct phrases, checked above).
    functions_of = {}
    for function, phrases in phrasing.AGGREGATE_PHRASES.items():
        for phrase in phrases:
            functions_of.setdefault(bracketed(phrase)[0], set()).add(function)
    assert all(len(functions) == 1 for functions in functions_of.values())


def test_list_separators():
    def join(items):
        return "".join(s + i for s, i in zip(phrasing.list_separators(len(items)), items))

    assert join(["a"]) == "a"
    assert join(["a", "b"]) == "a and b"
    assert join(["a", "b", "c", "d"]) == "a, b, c and d"


# -- generated examples ------------------------------------------------------------------------


def test_columns_match_the_design():
    df = generate_examples("cs1", 3, seed=0)
    assert list(df.columns) == SCHEMA.names
    assert df["example_id"].tolist() == [0, 1, 2]


def test_same_seed_same_examples_other_seed_or_set_differs():
    a = generate_examples("cs3", 200, seed=5, use_synonyms_table=True, use_synonyms_field=True)
    b = generate_examples("cs3", 200, seed=5, use_synonyms_table=True, use_synonyms_field=True)
    pd.testing.assert_frame_equal(a, b)
    c = generate_examples("cs3", 200, seed=6, use_synonyms_table=True, use_synonyms_field=True)
    assert (a["prompt"] != c["prompt"]).mean() > 0.9
    # Command sets do not share a random stream: the first example's table is drawn afresh.
    first_tables = {cs: [generate_examples(cs, 1, seed=s)["table"][0] for s in range(5)]
                    for cs in COMMAND_SETS}
    assert first_tables["cs1"] != first_tables["cs2"] != first_tables["cs3"]


def test_create_table_and_select_run_in_sqlite(with_synonyms):
    rows = all_rows(with_synonyms)
    assert len(rows) >= 3000
    db = sqlite3.connect(":memory:")
    for row in rows:
        db.execute(f"DROP TABLE IF EXISTS {row.table}")
        db.execute(row.create_table)
        db.execute(f"INSERT INTO {row.table} DEFAULT VALUES")
        cursor = db.execute(row.sql)
        cursor.fetchall()
        expected = [f"{a}_{f}" if a else f for f, a in zip(row.selected_fields, row.aggregates)]
        assert [d[0] for d in cursor.description] == expected, row.sql


def test_sql_and_context_follow_the_structured_columns(with_synonyms):
    for row in all_rows(with_synonyms):
        columns = ", ".join(f"{c['name']} {c['type']}" for c in row.columns)
        assert row.create_table == f"CREATE TABLE {row.table} ( {columns} )"
        items = [
            f"{a}({f}) AS {a}_{f}" if a else f for f, a in zip(row.selected_fields, row.aggregates)
        ]
        sql = f"SELECT {', '.join(items)} FROM {row.table}"
        if len(row.order_by):
            sql += " ORDER BY " + ", ".join(f"{o['field']} {o['direction']}" for o in row.order_by)
        assert row.sql == sql
        assert row.prompt == (
            f"### Instruction: {row.english} ### Context: {row.create_table} ### Response: "
        )
        assert " ".join(row.prompt.split()) + " " == row.prompt


def test_command_set_clauses(with_synonyms):
    for cs, df in with_synonyms.items():
        for row in df.itertuples(index=False):
            names = [c["name"] for c in row.columns]
            assert row.command_set == cs
            assert len(set(row.selected_fields)) == len(row.selected_fields) >= 1
            assert set(row.selected_fields) <= set(names)
            assert all(c["type"] == FIELD_TYPES[c["name"]] for c in row.columns)
            order_fields = [o["field"] for o in row.order_by]
            if cs == "cs1":
                assert order_fields == []
            else:
                assert 1 <= len(order_fields) == len(set(order_fields)) <= 2
                assert set(order_fields) <= set(names)
                assert {o["direction"] for o in row.order_by} <= {"ASC", "DESC"}
            if cs == "cs3":
                assert any(row.aggregates)
                for field, aggregate in zip(row.selected_fields, row.aggregates):
                    assert aggregate == "" or aggregate in allowed_aggregates(FIELD_TYPES[field])
            else:
                assert list(row.aggregates) == [""] * len(row.selected_fields)
    # Over 1000 examples every choice is exercised.
    cs3 = with_synonyms["cs3"]
    used = {a for aggs in cs3["aggregates"] for a in aggs}
    assert used == {"", "SUM", "AVG", "MIN", "MAX", "COUNT"}
    assert {len(o) for o in cs3["order_by"]} == {1, 2}
    assert {o["direction"] for obs in cs3["order_by"] for o in obs} == {"ASC", "DESC"}
    assert max(len(s) for s in cs3["selected_fields"]) == 4


def test_min_and_max_cols_respected():
    df = generate_examples("cs2", 400, seed=3, min_cols=3, max_cols=6)
    n_columns = df["columns"].map(len)
    assert n_columns.min() == 3 and n_columns.max() == 6
    assert (df["selected_fields"].map(len) <= n_columns).all()
    single = generate_examples("cs1", 50, seed=3, min_cols=1, max_cols=1)
    assert (single["columns"].map(len) == 1).all()


def test_bad_settings_raise_config_errors():
    with pytest.raises(ConfigError, match="command_set"):
        generate_examples("cs9", 1, seed=0)
    with pytest.raises(ConfigError, match="min_cols"):
        generate_examples("cs1", 1, seed=0, min_cols=5, max_cols=4)


def test_synonyms_only_in_the_instruction_and_used_when_enabled(with_synonyms):
    rows = all_rows(with_synonyms)
    table_synonym_used = field_synonym_used = n_fields = 0
    for row in rows:
        synonyms = [row.table_synonym] + list(row.field_synonyms)
        names = [row.table] + list(row.selected_fields)
        for synonym, name in zip(synonyms, names):
            assert re.search(rf"\b{re.escape(synonym)}\b", row.english)
            if synonym != name:
                assert synonym in (TABLES[name] if name == row.table else dict(
                    (f.name, f.synonyms) for f in FIELDS)[name])
                for text in (row.create_table, row.sql):
                    assert not re.search(rf"\b{re.escape(synonym)}\b", text), (synonym, text)
        table_synonym_used += row.table_synonym != row.table
        field_synonym_used += sum(s != f for s, f in zip(row.field_synonyms, row.selected_fields))
        n_fields += len(row.selected_fields)
    assert 0.75 < table_synonym_used / len(rows) < 0.85
    assert 0.45 < field_synonym_used / n_fields < 0.55


def test_without_synonyms_the_instruction_uses_the_names(without_synonyms):
    for row in all_rows(without_synonyms):
        assert row.table_synonym == row.table
        assert list(row.field_synonyms) == list(row.selected_fields)


def expected_span_text(role, row):
    """The text a span of ``role`` must cover, or the set of texts it may cover."""
    kind, _, index = role.rpartition("_")
    if not index.isdigit():
        return row.table_synonym if role == "eng_table" else row.table
    i = int(index) - 1
    aggregate = row.aggregates[i] if kind.endswith("agg") or kind == "sql_alias" else None
    if kind == "eng_order_field":
        field = row.order_by[i]["field"]
        if field in row.selected_fields:
            return row.field_synonyms[list(row.selected_fields).index(field)]
        return {field, *dict((f.name, f.synonyms) for f in FIELDS)[field]}
    return {
        "eng_field": lambda: row.field_synonyms[i],
        "def_field": lambda: row.columns[i]["name"],
        "def_type": lambda: row.columns[i]["type"],
        "sql_field": lambda: row.selected_fields[i],
        "sql_agg": lambda: aggregate,
        "sql_alias": lambda: f"{aggregate}_{row.selected_fields[i]}",
        "eng_agg": lambda: {b for p in phrasing.AGGREGATE_PHRASES[aggregate] for b in bracketed(p)},
        "sql_order_field": lambda: row.order_by[i]["field"],
        "sql_order_dir": lambda: row.order_by[i]["direction"],
        "eng_order_dir": lambda: set(phrasing.DIRECTION_PHRASES[row.order_by[i]["direction"]]),
    }[kind]()


def expected_roles(row):
    n_selected, n_order = len(row.selected_fields), len(row.order_by)
    roles = {"eng_table", "def_table", "sql_table"}
    roles |= {f"{r}_{j}" for j in range(1, len(row.columns) + 1) for r in ("def_field", "def_type")}
    roles |= {f"{r}_{k}" for k in range(1, n_selected + 1) for r in ("eng_field", "sql_field")}
    roles |= {f"{r}_{k}" for k in range(1, n_order + 1)
              for r in ("eng_order_field", "sql_order_field", "eng_order_dir", "sql_order_dir")}
    roles |= {f"{r}_{k}" for k, a in enumerate(row.aggregates, 1) if a
              for r in ("eng_agg", "sql_agg", "sql_alias")}
    return roles


def test_every_span_covers_what_its_role_names(with_synonyms):
    for row in all_rows(with_synonyms):
        text = row.prompt + row.sql
        english_start = len("### Instruction: ")
        context_start = row.prompt.index(row.create_table)
        section = {
            "eng": (english_start, english_start + len(row.english)),
            "def": (context_start, context_start + len(row.create_table)),
            "sql": (len(row.prompt), len(text)),
        }
        roles = [s["role"] for s in row.spans]
        assert len(roles) == len(set(roles)) and set(roles) == expected_roles(row)
        previous_end = 0
        for span in row.spans:
            assert span["start"] >= previous_end  # sorted and disjoint
            previous_end = span["end"]
            covered = text[span["start"]:span["end"]]
            expected = expected_span_text(span["role"], row)
            assert covered in expected if isinstance(expected, set) else covered == expected, (
                span["role"], covered, expected)
            lo, hi = section[span["role"].split("_")[0]]
            assert lo <= span["start"] < span["end"] <= hi, span


def test_run_stage_writes_the_parquet(tmp_path):
    out = tmp_path / "data" / "cs2" / "examples.parquet"
    data = dict(n_examples=20, seed=4, min_cols=2, max_cols=3,
                use_synonyms_table=True, use_synonyms_field=False)
    run_stage({"command_set": "cs2", "data": data}, out=str(out))
    assert pq.read_schema(out).remove_metadata() == SCHEMA
    written = pd.read_parquet(out)
    expected = generate_examples("cs2", 20, seed=4, min_cols=2, max_cols=3, use_synonyms_table=True)
    assert written["prompt"].tolist() == expected["prompt"].tolist()
    assert [list(s) for s in written["spans"]] == expected["spans"].tolist()
    assert [p.name for p in out.parent.iterdir()] == ["examples.parquet"]
