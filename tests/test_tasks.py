"""Every task through the generic pieces: dataset options, the examples stage, token roles."""

import pandas as pd
import pyarrow.parquet as pq
import pytest

from circuitflow import examples as examples_stage
from circuitflow.errors import ConfigError, TableError
from circuitflow.tasks import TASKS, dataset_entry, prompts, task_of, tinysql
from circuitflow.token_roles import UNCOVERED, tokenize_example

DATASETS = {
    **{cs: {"task": "tinysql", "command_set": cs} for cs in ("cs1", "cs2", "cs3", "cs4", "cs5")},
    "sort": {"task": "sorting", "length": 6, "max_value": 9, "class_output": 3},
    "add": {"task": "arithmetic", "n_digits": 3, "class_digit": 1},
}


def entry(name):
    return {**dataset_entry(name, DATASETS[name]), "name": name}


def test_every_task_is_listed_and_has_the_interface():
    for name in TASKS:
        task = task_of({"task": name})
        for attribute in ("OPTIONS", "COLUMNS", "FEATURES", "PAIRS_GIVEN", "MODEL", "has_classes",
                          "examples", "pairs", "tokenizer"):
            assert hasattr(task, attribute), f"task {name} lacks {attribute}"
        assert all("default" in spec or name == "prompts" for spec in task.OPTIONS.values())


@pytest.mark.parametrize("dataset,message", [
    ({"task": "chess"}, r"'datasets.d.task': unknown task 'chess'; expected one of tinysql"),
    ({"task": "sorting", "lenght": 5}, r"'datasets.d.lenght': task sorting has no such option "
                                       r"\(its options: balanced, class_output, length, max_value"),
    ({"task": "tinysql", "command_set": "cs9"}, r"'datasets.d.command_set': 'cs9' is not one of"),
    ({"command_set": "cs1"}, r"'datasets.d': needs a 'task'"),
])
def test_bad_dataset_options_name_the_key(dataset, message):
    with pytest.raises(ConfigError, match=message):
        dataset_entry("d", dataset)


@pytest.mark.parametrize("name", DATASETS)
def test_examples_stage_writes_typed_tables_and_repeats_itself(name, tmp_path):
    params = {"dataset": entry(name), "data": {"n_examples": 40, "seed": 3}}
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    examples_stage.run_stage(params, out=str(first))
    examples_stage.run_stage(params, out=str(second))
    schema = pq.read_schema(first)
    assert schema.names[:6] == ["example_id", "prompt", "answer", "spans", "class", "class_role"]
    assert schema.field("spans").type == examples_stage.SPANS
    assert pq.read_table(first).equals(pq.read_table(second))
    table = pd.read_parquet(first)
    assert table["example_id"].tolist() == list(range(40))
    other = tmp_path / "c.parquet"
    examples_stage.run_stage({**params, "data": {"n_examples": 40, "seed": 4}}, out=str(other))
    assert not pd.read_parquet(other)["prompt"].equals(table["prompt"])


@pytest.mark.parametrize("name", DATASETS)
def test_spans_cover_every_character_and_every_token_has_a_role(name):
    data = entry(name)
    task = task_of(data)
    table = task.examples(data, 60, 5)
    tokenizer = task.tokenizer(data, list(table["prompt"]) + list(table["answer"]), 1024)
    for row in table.itertuples():
        text = row.prompt + row.answer
        covered = set()
        for span in row.spans:
            covered |= set(range(span["start"], span["end"]))
        assert covered == set(range(len(text)))
        prompt_ids, answer_ids, roles = tokenize_example(tokenizer, row.prompt, row.answer, row.spans)
        assert len(roles) == len(prompt_ids) + len(answer_ids) and UNCOVERED not in roles


def test_tinysql_roles_put_markers_sections_and_names_where_they_are():
    data = entry("cs2")
    table = tinysql.examples(data, 20, 1)
    tokenizer = tinysql.tokenizer(data, list(table["prompt"]) + list(table["answer"]), 1024)
    for row in table.itertuples():
        ids, answer, roles = tokenize_example(tokenizer, row.prompt, row.answer, row.spans)
        tokens = [tokenizer.decode([t]) for t in ids + answer]
        by_role = {}
        for token, role in zip(tokens, roles):
            by_role.setdefault(role, []).append(token.strip())
        assert "".join(by_role["def_table"]) == row.table
        assert "###" in by_role["template"] and "Instruction" in by_role["template"]
        assert by_role["response"][0] == ""  # the space that ends the prompt
        assert "SELECT" in by_role["response"]


def test_tinysql_order_direction_classes():
    data = {**dataset_entry("d", {"task": "tinysql", "command_set": "cs2",
                                  "classes": "order_direction"}), "name": "d"}
    table = tinysql.examples(data, 50, 2)
    assert table["class"].tolist() == [ex[0]["direction"] for ex in table["order_by"]]
    assert set(table["class"]) == {"ASC", "DESC"} and set(table["class_role"]) == {"sql_order_dir_1"}
    with pytest.raises(ConfigError, match="order_direction needs ORDER BY"):
        tinysql.examples({**data, "command_set": "cs1"}, 5, 2)


def write_prompts(tmp_path, rows, suffix=".jsonl"):
    path = tmp_path / f"own{suffix}"
    frame = pd.DataFrame(rows)
    if suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return str(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_own_prompts_become_examples_with_word_roles(tmp_path, suffix):
    path = write_prompts(tmp_path, [
        {"prompt": "1 3 5 7 9 11", "answer": " 13", "class": "odd"},
        {"prompt": "2 4 6", "answer": " 8 10", "class": "even"},
    ], suffix)
    table = prompts.examples({"path": path}, 10, 0)
    assert table["answer"].tolist() == [" 13", " 8 10"]
    assert table["class"].tolist() == ["odd", "even"]
    roles = [s["role"] for s in table["spans"][1]]
    assert roles == ["prompt_1", "prompt_2", "prompt_3", "answer_1", "answer_2"]


@pytest.mark.parametrize("rows,message", [
    ([{"prompt": "1 2"}], r"own.jsonl: missing column\(s\) answer"),
    ([{"prompt": "1 2", "answer": " 3"}, {"prompt": "4 5", "answer": ""}], r"row 1: empty answer"),
    ([{"prompt": "1 2", "answer": " 3", "corrupt_prompt": "1 4"}],
     r"corrupt_prompt and corrupt_answer come together"),
])
def test_own_prompts_errors_name_the_file_and_row(tmp_path, rows, message):
    path = write_prompts(tmp_path, rows)
    with pytest.raises(TableError, match=message):
        prompts.examples({"path": path}, 10, 0)


def test_own_prompts_without_pairs_say_so(tmp_path):
    path = write_prompts(tmp_path, [{"prompt": "1 2", "answer": " 3"}])
    with pytest.raises(TableError, match="no corrupt_prompt/corrupt_answer columns"):
        prompts.pairs({"path": path}, "CORRUPT", 5, 0)
