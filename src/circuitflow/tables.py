"""Parquet tables: atomic writes, and reads that check the columns a stage needs."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from circuitflow.errors import TableError
from circuitflow.outputs import atomic_path


def write_table(df: pd.DataFrame, target: str | Path, schema: pa.Schema | None = None) -> None:
    """Write ``df`` to Parquet atomically; ``schema`` fixes column types (e.g. list<int32>)."""
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | Path, columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a Parquet file, failing with its name and the missing columns if it is not usable."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: file not found")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(path, e) from e
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise TableError(
            f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(schema.names)}"
        )
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(path, e) from e


def _unreadable(path: Path, error: Exception) -> TableError:
    reason = " ".join(str(error).split())  # Arrow's messages may span lines
    return TableError(
        f"{path}: not a readable Parquet file ({reason}); it is truncated or was not written by "
        "circuitflow: delete it and run the workflow again to rebuild it"
    )
