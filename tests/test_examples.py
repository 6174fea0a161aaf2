import datetime
import re
import sqlite3
from collections import Counter, defaultdict

import pandas as pd
import pytest

from circuitflow.data import phrasing
from circuitflow.data.examples import (
    COMMAND_SETS, SCHEMA, SQL_COMPARISONS, generate_examples,
)
from circuitflow.data.vocabulary import (
    DATE_TYPES,
    FIELDS,
    NUMERIC_TYPES,
    OTHER_TYPES,
    TABLES,
    TEXT_VALUES,
    allowed_aggregates,
    foreign_key,
    value_kind,
)
from circuitflow.errors import ConfigError

FIELD_TYPES = {f.name: f.type for f in FIELDS}
FIELD_SYNONYMS = {f.name: f.synonyms for f in FIELDS}
N_PER_SET = 2000


@pytest.fixture(scope="module")
def with_synonyms():
    """2000 examples of each command set, synonyms on: 10000 in all."""
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


def condition_phrases():
    return [p for by_kind in phrasing.CONDITION_PHRASES.values() for ps in by_kind.values()
            for p in ps]


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
    clause_words |= {"or"} | {w for lead in phrasing.WHERE_LEADS for w in lead.split()}
    clause_words |= {w for p in condition_phrases() for b in bracketed(p) for w in b.split()}
    clause_words -= {"of", "for", "in", "to", "from", "the", "with"}  # glue words in synonyms
    synonyms = [s for v in TABLES.values() for s in v] + [s for f in FIELDS for s in f.synonyms]
    assert [s for s in synonyms if set(s.split()) & clause_words] == []


def test_text_values_are_plain_words_naming_nothing():
    names = set(TABLES) | {s for v in TABLES.values() for s in v}
    names |= {f.name for f in FIELDS} | {s for f in FIELDS for s in f.synonyms}
    assert len(set(TEXT_VALUES)) == len(TEXT_VALUES) >= 40
    assert all(re.fullmatch(r"[a-z]+", v) for v in TEXT_VALUES)  # nothing to escape in a literal
    assert not set(TEXT_VALUES) & names


def test_value_kinds_cover_every_type():
    assert {value_kind(t) for t in NUMERIC_TYPES} == {"number"}
    assert {value_kind(t) for t in DATE_TYPES} == {"date"}
    assert value_kind("BOOLEAN") == "boolean"
    assert {value_kind(t) for t in ("TEXT", "VARCHAR(255)", "JSON")} == {"text"}


def test_foreign_keys_name_the_singular_and_differ_per_table():
    assert [foreign_key(t) for t in ("customers", "categories", "addresses", "branches",
                                     "movies", "inventory", "price_lists")] == [
        "customer_id", "category_id", "address_id", "branch_id", "movie_id", "inventory_id",
        "price_list_id"]
    keys = [foreign_key(t) for t in TABLES]
    assert len(set(keys)) == len(keys) and "id" not in keys
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*_id", k) for k in keys)


def test_all_names_are_valid_sqlite_identifiers():
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE TABLE probe ( {', '.join(f'{f.name} {f.type}' for f in FIELDS)} )")
    for table in TABLES:
        db.execute(f"CREATE TABLE {table} ( id INTEGER, {foreign_key(table)} INTEGER )")


def test_aggregates_depend_on_type():
    assert allowed_aggregates("DECIMAL(10,2)") == ("SUM", "AVG", "MIN", "MAX", "COUNT")
    assert "SUM" not in allowed_aggregates("DATE") and "MAX" in allowed_aggregates("TIMESTAMP")
    assert allowed_aggregates("TEXT") == ("COUNT",)


def test_at_least_twenty_phrasings_per_clause_kind():
    aggregate_phrases = [p for ps in phrasing.AGGREGATE_PHRASES.values() for p in ps]
    direction_phrases = [p for ps in phrasing.DIRECTION_PHRASES.values() for p in ps]
    kinds = (phrasing.SELECT_TEMPLATES, aggregate_phrases, phrasing.ORDER_LEADS, direction_phrases,
             phrasing.JOIN_TEMPLATES, phrasing.WHERE_LEADS, set(condition_phrases()))
    for phrases in kinds:
        assert len(phrases) >= 20 and len(set(phrases)) == len(phrases)
    for by_kind in phrasing.CONDITION_PHRASES.values():  # kinds share wordings such as "[is]"
        phrases = [p for ps in by_kind.values() for p in ps]
        assert len(set(phrases)) == len(phrases)
    for template in phrasing.SELECT_TEMPLATES + phrasing.JOIN_TEMPLATES:
        assert template.count("{fields}") == 1 and template.count("{table}") == 1
        assert template.count("{table_2}") == (template in phrasing.JOIN_TEMPLATES)
    for phrase in aggregate_phrases:
        assert phrase.count("{field}") == 1 and len(bracketed(phrase)) == 1
    # An aggregate wording names one function only (directions: distinct phrases, checked above).
    functions_of = {}
    for function, phrases in phrasing.AGGREGATE_PHRASES.items():
        for phrase in phrases:
            functions_of.setdefault(bracketed(phrase)[0], set()).add(function)
    assert all(len(functions) == 1 for functions in functions_of.values())


def test_condition_phrases_fit_the_value_kinds():
    comparisons = {kind: set(by_kind) for kind, by_kind in phrasing.CONDITION_PHRASES.items()}
    six = {"=", "!=", "<", ">", "<=", ">="}
    assert comparisons == {"number": six, "date": six, "boolean": {"="},
                           "text": {"=", "!=", "contains", "starts with", "ends with"}}
    assert set().union(*comparisons.values()) == set(SQL_COMPARISONS)
    for by_kind in phrasing.CONDITION_PHRASES.values():
        comparison_of = defaultdict(set)
        for comparison, phrases in by_kind.items():
            for phrase in phrases:
                assert phrase.count("{value}") == 1 and len(bracketed(phrase)) == 1, phrase
                comparison_of[re.sub(r"[\[\]]", "", phrase)].add(comparison)
        # Within a kind, a wording says one comparison.
        assert all(len(c) == 1 for c in comparison_of.values())


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


@pytest.mark.parametrize("command_set", COMMAND_SETS)
def test_same_seed_same_examples_other_seed_differs(command_set):
    def draw(seed):
        return generate_examples(
            command_set, 200, seed=seed, use_synonyms_table=True, use_synonyms_field=True
        )

    a = draw(5)
    pd.testing.assert_frame_equal(a, draw(5))
    assert (a["prompt"] != draw(6)["prompt"]).mean() > 0.9


def test_command_sets_draw_from_their_own_streams():
    # The first example's table is drawn afresh for every command set.
    first_tables = {tuple(generate_examples(cs, 1, seed=s)["table"][0] for s in range(5))
                    for cs in COMMAND_SETS}
    assert len(first_tables) == len(COMMAND_SETS)


def table_of(row):
    """Which table each column of the example belongs to."""
    tables = {c["name"]: row.table for c in row.columns}
    if row.join is not None:
        tables |= {c["name"]: row.join["table"] for c in row.join["columns"]}
    return tables


def column_types(row):
    columns = list(row.columns) + (list(row.join["columns"]) if row.join is not None else [])
    return {c["name"]: c["type"] for c in columns}


def test_every_statement_runs_in_sqlite(with_synonyms):
    for cs, df in with_synonyms.items():
        assert len(df) >= 2000
        for row in df.itertuples(index=False):
            db = sqlite3.connect(":memory:")
            db.executescript(row.create_table)
            for table in set(table_of(row).values()):
                db.execute(f"INSERT INTO {table} DEFAULT VALUES")
            cursor = db.execute(row.sql)
            cursor.fetchall()
            expected = [f"{a}_{f}" if a else f for f, a in zip(row.selected_fields, row.aggregates)]
            assert [d[0] for d in cursor.description] == expected, row.sql
            db.close()


def test_sql_and_context_follow_the_structured_columns(with_synonyms):
    for row in all_rows(with_synonyms):
        def create(table, columns):
            listed = ", ".join(f"{c['name']} {c['type']}" for c in columns)
            return f"CREATE TABLE {table} ( {listed} )"

        context = create(row.table, row.columns)
        if row.join is not None:
            context += "; " + create(row.join["table"], row.join["columns"])
        assert row.create_table == context
        # Only CS5's join keys are qualified: the other columns' names belong to one table.
        items = [f"{a}({f}) AS {a}_{f}" if a else f
                 for f, a in zip(row.selected_fields, row.aggregates)]
        sql = f"SELECT {', '.join(items)} FROM {row.table}"
        if row.join is not None:
            join = row.join
            sql += (f" JOIN {join['table']} ON {row.table}.{join['foreign_key']}"
                    f" = {join['table']}.{join['key']}")
        if len(row.where):
            sql += " WHERE " + " ".join(
                f"{w['conjunction']} {w['field']} {w['op']} {w['value']}".lstrip()
                for w in row.where)
        if len(row.order_by):
            sql += " ORDER BY " + ", ".join(
                f"{o['field']} {o['direction']}" for o in row.order_by)
        assert row.sql == sql
        assert row.prompt == (
            f"### Instruction: {row.english} ### Context: {row.create_table} ### Response: "
        )
        assert " ".join(row.prompt.split()) + " " == row.prompt


def usable_columns(row):
    """The columns a clause may name: all but CS5's join keys."""
    keys = {row.join["foreign_key"], row.join["key"]} if row.join is not None else set()
    return set(table_of(row)) - keys


def test_command_set_clauses(with_synonyms):
    for cs, df in with_synonyms.items():
        for row in df.itertuples(index=False):
            usable = usable_columns(row)
            assert row.command_set == cs
            assert len(set(row.selected_fields)) == len(row.selected_fields) >= 1
            assert set(row.selected_fields) <= usable
            types = column_types(row)
            assert all(types[name] == FIELD_TYPES[name] for name in usable)
            order_fields = [o["field"] for o in row.order_by]
            if cs in ("cs2", "cs3") or order_fields:
                assert 1 <= len(order_fields) == len(set(order_fields)) <= 2
                assert set(order_fields) <= usable
                assert {o["direction"] for o in row.order_by} <= {"ASC", "DESC"}
            if cs == "cs3":
                assert any(row.aggregates)
            for field, aggregate in zip(row.selected_fields, row.aggregates):
                assert aggregate == "" or aggregate in allowed_aggregates(FIELD_TYPES[field])
            if cs == "cs4":
                assert len(row.where) >= 1
            where_fields = [w["field"] for w in row.where]
            assert len(where_fields) == len(set(where_fields)) <= 3
            assert set(where_fields) <= usable
            assert (row.join is not None) == (cs == "cs5")

        def share(column):
            return df[column].map(lambda v: len(v) > 0 and any(v)).mean()

        # Each clause is present in the sets that always have it, in about half of the examples
        # of the later sets that may have it, and nowhere else.
        expected_share = {
            "order_by": {"cs1": 0, "cs2": 1, "cs3": 1, "cs4": 0.5, "cs5": 0.5},
            "aggregates": {"cs1": 0, "cs2": 0, "cs3": 1, "cs4": 0.5, "cs5": 0.5},
            "where": {"cs1": 0, "cs2": 0, "cs3": 0, "cs4": 1, "cs5": 0.5},
        }
        for column, shares in expected_share.items():
            assert share(column) == pytest.approx(shares[cs], abs=0.05), (cs, column)
    # Over 2000 examples every choice is exercised.
    cs3 = with_synonyms["cs3"]
    used = {a for aggs in cs3["aggregates"] for a in aggs}
    assert used == {"", "SUM", "AVG", "MIN", "MAX", "COUNT"}
    assert {len(o) for o in cs3["order_by"]} == {1, 2}
    assert {o["direction"] for obs in cs3["order_by"] for o in obs} == {"ASC", "DESC"}
    assert max(len(s) for s in cs3["selected_fields"]) == 4


def test_where_conditions_fit_the_column_types(with_synonyms):
    ops_used = defaultdict(set)
    like_shapes, conjunctions, n_conditions = set(), set(), set()
    for row in all_rows({cs: with_synonyms[cs] for cs in ("cs4", "cs5")}):
        types = column_types(row)
        n_conditions.add(len(row.where))
        for k, w in enumerate(row.where):
            assert (w["conjunction"] == "") == (k == 0) and w["conjunction"] in ("", "AND", "OR")
            conjunctions.add(w["conjunction"])
            sql_type, op, value = types[w["field"]], w["op"], w["value"]
            if sql_type in NUMERIC_TYPES:
                kind = "number"
                assert op in ("=", "!=", "<", ">", "<=", ">=")
                assert re.fullmatch(r"\d+(\.\d\d)?", value) and (
                    ("." in value) == (sql_type == "DECIMAL(10,2)")), (sql_type, value)
            elif sql_type in DATE_TYPES:
                kind = "date"
                assert op in ("=", "!=", "<", ">", "<=", ">=")
                assert re.fullmatch(r"'\d{4}-\d\d-\d\d'", value)
                datetime.date.fromisoformat(value.strip("'"))
            elif sql_type == "BOOLEAN":
                kind = "boolean"
                assert op == "=" and value in ("TRUE", "FALSE")
            else:
                kind = "text"
                assert op in ("=", "!=", "LIKE")
                word = value.strip("'%")
                assert word in TEXT_VALUES
                if op == "LIKE":
                    like_shapes.add(value.replace(word, "w"))
                else:
                    assert value == f"'{word}'"
            ops_used[kind].add(op)
    six = {"=", "!=", "<", ">", "<=", ">="}
    assert dict(ops_used) == {"number": six, "date": six, "boolean": {"="},
                              "text": {"=", "!=", "LIKE"}}
    assert like_shapes == {"'%w%'", "'w%'", "'%w'"}
    assert conjunctions == {"", "AND", "OR"} and n_conditions >= {1, 2, 3}


def test_cs5_joins_two_tables_on_a_foreign_key(with_synonyms):
    from_joined = 0
    for row in with_synonyms["cs5"].itertuples(index=False):
        join = row.join
        assert join["table"] != row.table and join["key"] == "id"
        assert join["columns"][0] == {"name": "id", "type": "INTEGER"}
        assert join["foreign_key"] == foreign_key(join["table"])
        own = [c["name"] for c in row.columns]
        assert {"name": join["foreign_key"], "type": "INTEGER"} in list(row.columns)
        joined = [c["name"] for c in join["columns"]]
        assert not set(own) & set(joined)
        assert "id" not in own and join["foreign_key"] not in joined
        assert re.search(rf"\b{re.escape(join['table_synonym'])}\b", row.english)
        from_joined += any(f in joined for f in row.selected_fields)
    assert 0.3 < from_joined / len(with_synonyms["cs5"]) < 0.95


def test_min_and_max_cols_respected():
    df = generate_examples("cs2", 400, seed=3, min_cols=3, max_cols=6)
    n_columns = df["columns"].map(len)
    assert n_columns.min() == 3 and n_columns.max() == 6
    assert (df["selected_fields"].map(len) <= n_columns).all()
    single = generate_examples("cs1", 50, seed=3, min_cols=1, max_cols=1)
    assert (single["columns"].map(len) == 1).all()
    # CS5: each table has its key besides min_cols..max_cols columns.
    joined = generate_examples("cs5", 50, seed=3, min_cols=1, max_cols=1)
    assert (joined["columns"].map(len) == 2).all()
    assert (joined["join"].map(lambda j: len(j["columns"])) == 2).all()


def test_bad_settings_raise_config_errors():
    with pytest.raises(ConfigError, match="command_set"):
        generate_examples("cs9", 1, seed=0)
    with pytest.raises(ConfigError, match="min_cols"):
        generate_examples("cs1", 1, seed=0, min_cols=5, max_cols=4)
    with pytest.raises(ConfigError, match="max_cols"):
        generate_examples("cs5", 1, seed=0, min_cols=1, max_cols=len(FIELDS) // 2)
    generate_examples("cs4", 1, seed=0, min_cols=1, max_cols=len(FIELDS) // 2)


def test_synonyms_only_in_the_instruction_and_used_when_enabled(with_synonyms):
    rows = all_rows(with_synonyms)
    table_synonym_used = field_synonym_used = n_tables = n_fields = 0
    for row in rows:
        synonyms = [row.table_synonym] + list(row.field_synonyms)
        names = [row.table] + list(row.selected_fields)
        if row.join is not None:
            synonyms.append(row.join["table_synonym"])
            names.append(row.join["table"])
        for synonym, name in zip(synonyms, names):
            assert re.search(rf"\b{re.escape(synonym)}\b", row.english)
            if synonym != name:
                assert synonym in (TABLES[name] if name in TABLES else FIELD_SYNONYMS[name])
                for text in (row.create_table, row.sql):
                    assert not re.search(rf"\b{re.escape(synonym)}\b", text), (synonym, text)
        table_synonym_used += sum(s != n for s, n in zip(synonyms, names) if n in TABLES)
        n_tables += 1 + (row.join is not None)
        field_synonym_used += sum(s != f for s, f in zip(row.field_synonyms, row.selected_fields))
        n_fields += len(row.selected_fields)
    assert 0.75 < table_synonym_used / n_tables < 0.85
    assert 0.45 < field_synonym_used / n_fields < 0.55


def test_without_synonyms_the_instruction_uses_the_names(without_synonyms):
    for row in all_rows(without_synonyms):
        assert row.table_synonym == row.table
        assert list(row.field_synonyms) == list(row.selected_fields)
        assert row.join is None or row.join["table_synonym"] == row.join["table"]


def comparison_of(condition):
    """The key of phrasing.CONDITION_PHRASES a condition's SQL says."""
    value = condition["value"]
    if condition["op"] != "LIKE":
        return condition["op"]
    if value.startswith("'%") and value.endswith("%'"):
        return "contains"
    return "ends with" if value.startswith("'%") else "starts with"


def english_value(condition):
    """How the instruction writes a condition's value."""
    value = condition["value"]
    if value in ("TRUE", "FALSE"):
        return value.lower()
    if re.fullmatch(r"'\d{4}-\d\d-\d\d'", value):
        return value.strip("'")
    return f"'{value.strip(chr(39) + '%')}'" if value.startswith("'") else value


def english_words_of(row, field):
    """The words the instruction may use for a column: the one it uses if it selects it."""
    if field in row.selected_fields:
        return {row.field_synonyms[list(row.selected_fields).index(field)]}
    return {field, *FIELD_SYNONYMS[field]}


def expected_span_text(role, row):
    """The set of texts a span of ``role`` may cover."""
    kind, _, index = role.rpartition("_")
    if not index.isdigit():
        return {"eng_table": {row.table_synonym}, "sql_join_table": {row.join and row.join["table"]}
                }.get(role, {row.table})
    i = int(index) - 1
    aggregate = row.aggregates[i] if kind.endswith("agg") or kind == "sql_alias" else None
    join = row.join or {}
    where = row.where[i] if "where" in kind else None
    return {
        "eng_table": lambda: {join["table_synonym"]},  # eng_table_2
        "def_table": lambda: {join["table"]},  # def_table_2
        "eng_field": lambda: {row.field_synonyms[i]},
        "def_field": lambda: {row.columns[i]["name"]},
        "def_type": lambda: {row.columns[i]["type"]},
        "def_field_2": lambda: {join["columns"][i]["name"]},
        "def_type_2": lambda: {join["columns"][i]["type"]},
        "sql_field": lambda: {row.selected_fields[i]},
        "sql_agg": lambda: {aggregate},
        "sql_alias": lambda: {f"{aggregate}_{row.selected_fields[i]}"},
        "eng_agg": lambda: {b for p in phrasing.AGGREGATE_PHRASES[aggregate] for b in bracketed(p)},
        "eng_order_field": lambda: english_words_of(row, row.order_by[i]["field"]),
        "sql_order_field": lambda: {row.order_by[i]["field"]},
        "sql_order_dir": lambda: {row.order_by[i]["direction"]},
        "eng_order_dir": lambda: set(phrasing.DIRECTION_PHRASES[row.order_by[i]["direction"]]),
        "sql_join_on_table": lambda: {(row.table, join["table"])[i]},
        "sql_join_on_field": lambda: {(join["foreign_key"], join["key"])[i]},
        "eng_where_field": lambda: english_words_of(row, where["field"]),
        "eng_where_op": lambda: {
            b for p in phrasing.CONDITION_PHRASES[value_kind(column_types(row)[where["field"]])][
                comparison_of(where)] for b in bracketed(p)},
        "eng_where_value": lambda: {english_value(where)},
        "eng_where_conj": lambda: {where["conjunction"].lower()},
        "sql_where_field": lambda: {where["field"]},
        "sql_where_op": lambda: {where["op"]},
        "sql_where_value": lambda: {where["value"]},
        "sql_where_conj": lambda: {where["conjunction"]},
    }[kind]()


def expected_roles(row):
    n_selected, n_order, n_where = len(row.selected_fields), len(row.order_by), len(row.where)
    roles = {"eng_table", "def_table", "sql_table"}
    roles |= {f"{r}_{j}" for j in range(1, len(row.columns) + 1) for r in ("def_field", "def_type")}
    roles |= {f"{r}_{k}" for k in range(1, n_selected + 1) for r in ("eng_field", "sql_field")}
    roles |= {f"{r}_{k}" for k in range(1, n_order + 1)
              for r in ("eng_order_field", "sql_order_field", "eng_order_dir", "sql_order_dir")}
    roles |= {f"{r}_{k}" for k, a in enumerate(row.aggregates, 1) if a
              for r in ("eng_agg", "sql_agg", "sql_alias")}
    roles |= {f"{r}_{k}" for k in range(1, n_where + 1)
              for r in ("eng_where_field", "eng_where_op", "eng_where_value",
                        "sql_where_field", "sql_where_op", "sql_where_value")}
    roles |= {f"{r}_{k}" for k in range(2, n_where + 1)
              for r in ("eng_where_conj", "sql_where_conj")}
    if row.join is not None:
        roles |= {"eng_table_2", "def_table_2", "sql_join_table"}
        roles |= {f"{r}_{j}" for j in range(1, len(row.join["columns"]) + 1)
                  for r in ("def_field_2", "def_type_2")}
        roles |= {f"sql_join_on_{r}_{i}" for i in (1, 2) for r in ("table", "field")}
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
        words_of_field = defaultdict(set)
        for span in row.spans:
            assert span["start"] >= previous_end  # sorted and disjoint
            previous_end = span["end"]
            covered = text[span["start"]:span["end"]]
            assert covered in expected_span_text(span["role"], row), (span["role"], covered)
            lo, hi = section[span["role"].split("_")[0]]
            assert lo <= span["start"] < span["end"] <= hi, span
            kind, _, index = span["role"].rpartition("_")
            fields = {"eng_field": row.selected_fields, "eng_where_field": row.where,
                      "eng_order_field": row.order_by}.get(kind)
            if fields is not None:
                field = fields[int(index) - 1]
                words_of_field[field if isinstance(field, str) else field["field"]].add(covered)
        # A column reads the same wherever the instruction names it.
        assert all(len(words) == 1 for words in words_of_field.values()), words_of_field


