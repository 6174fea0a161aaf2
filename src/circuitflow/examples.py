"""Stage generate-examples: a dataset's analysis examples, drawn by its task.

Every table has the columns the task interface names (``circuitflow.tasks``) with fixed types,
then the task's own columns (types from its ``COLUMNS``, a list of pyarrow fields, else inferred).
"""

from __future__ import annotations

import logging

import pyarrow as pa

from circuitflow.stage import Stage
from circuitflow.tables import write_table
from circuitflow.tasks import task_of

log = logging.getLogger(__name__)

SPANS = pa.list_(pa.struct([("role", pa.string()), ("start", pa.int64()), ("end", pa.int64())]))
COMMON_COLUMNS = [
    pa.field("example_id", pa.int64()),
    pa.field("prompt", pa.string()),
    pa.field("answer", pa.string()),
    pa.field("spans", SPANS),
    pa.field("class", pa.string()),
    pa.field("class_role", pa.string()),
]


def examples_schema(task, table) -> pa.Schema:
    """The common columns, then the task's own in the order its table has them."""
    common = {f.name for f in COMMON_COLUMNS}
    typed = {f.name: f for f in task.COLUMNS}
    own = [c for c in table.columns if c not in common]
    inferred = pa.Schema.from_pandas(table[[c for c in own if c not in typed]], preserve_index=False)
    return pa.schema(COMMON_COLUMNS + [typed.get(c) or inferred.field(c) for c in own])


def run_stage(params, out: str) -> None:
    dataset = params["dataset"]
    task = task_of(dataset)
    table = task.examples(dataset, params["data"]["n_examples"], params["data"]["seed"])
    schema = examples_schema(task, table)
    write_table(table[schema.names], out, schema=schema)
    log.info("wrote %d examples of dataset %s to %s", len(table), dataset["name"], out)


STAGE = Stage(
    "generate-examples", run_stage, (), ("out",), reads=("dataset", "data.n_examples", "data.seed")
)
