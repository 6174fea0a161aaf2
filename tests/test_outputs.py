"""Outputs appear only when complete; Parquet inputs fail with the file and column named."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet below)
import pytest

from circuitflow.errors import TableError
from circuitflow.outputs import atomic_path
from circuitflow.tables import read_table, write_table


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "table.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_failed_directory_write_keeps_previous_version(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "weights").write_text("v2, half")
            raise RuntimeError("killed")
    assert (target / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_round_trip_with_schema(tmp_path):
    df = pd.DataFrame({"ids": [[1, 2], [3]], "name": ["a", "b"]})
    schema = pa.schema([("ids", pa.list_(pa.int32())), ("name", pa.string())])
    write_table(df, tmp_path / "t.parquet", schema=schema)
    back = read_table(tmp_path / "t.parquet", columns=["ids"])
    assert [list(x) for x in back["ids"]] == [[1, 2], [3]]
    assert pa.parquet.read_schema(tmp_path / "t.parquet").field("ids").type == pa.list_(pa.int32())


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "clean.parquet"
    write_table(pd.DataFrame({"example_id": [1]}), path)
    with pytest.raises(TableError, match=r"clean\.parquet: missing column\(s\) correct"):
        read_table(path, columns=["example_id", "correct"])


def test_foreign_file_is_named(tmp_path):
    path = tmp_path / "examples.parquet"
    path.write_text("not parquet")
    with pytest.raises(TableError, match=r"examples\.parquet: not a readable Parquet file"):
        read_table(path)
    with pytest.raises(TableError, match="file not found"):
        read_table(tmp_path / "missing.parquet")


def test_outputs_get_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        with atomic_path(tmp_path / "d", directory=True) as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
