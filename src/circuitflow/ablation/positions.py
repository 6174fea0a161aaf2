"""Stage position-ablation: which token positions the model needs.

Every block's output (the residual stream after it) is set to zero at one position p, for every
p and every selected example; the intervention fails when greedy decoding no longer reproduces
the answer (see ``engine``).
"""

from __future__ import annotations

from circuitflow.ablation.stage_engine import engine_for_stage
from circuitflow.ablation.summary import detail_table, summarize
from circuitflow.tables import write_table
from circuitflow.stage import Stage


def run_stage(params: dict, clean: str, detail: str, summary: str) -> None:
    engine = engine_for_stage(params, clean)
    table = detail_table(engine.examples, engine.ablate_positions())
    table = table.sort_values(["example_id", "position"], ignore_index=True)
    write_table(table, detail)
    write_table(summarize(table, ["position"]), summary)


STAGE = Stage(
    "position-ablation", run_stage, ("clean",), ("detail", "summary"),
    reads=("model", "device", "ablation.n_examples", "ablation.batch_size"),
)
