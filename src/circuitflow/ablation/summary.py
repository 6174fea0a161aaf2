"""Tables of ablation results: one row per intervention, and counts per node, position or role."""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuitflow.ablation.engine import AblationResult
from circuitflow.ablation.examples import AblationExamples


def detail_table(examples: AblationExamples, result: AblationResult) -> pd.DataFrame:
    """One row per intervention: example_id, position, role, failed, logprob_drop."""
    return pd.DataFrame({
        "example_id": examples.example_ids[result.example],
        "position": result.position.astype(np.int32),
        "role": [examples.roles[e][p] for e, p in zip(result.example, result.position)],
        "failed": result.failed,
        "logprob_drop": result.logprob_drop.astype(np.float32),
    })


def position_roles(detail: pd.DataFrame) -> pd.Series:
    """The most common role at each position (examples differ in what sits where)."""
    return detail.groupby("position")["role"].agg(lambda roles: roles.mode().iloc[0])


def role_first_positions(detail: pd.DataFrame) -> pd.Series:
    """Per role, the median over examples of the first position it holds in each: where it
    sits in a typical example, whatever the examples' lengths."""
    first = detail.groupby(["example_id", "role"])["position"].min()
    return first.groupby("role").median()


def summarize(detail: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of ``keys``: n_tried, n_failed, fail_rate (%, 0-100), mean_logprob_drop; and
    the most common role when grouped by position. Grouped by role, also n_examples (a role
    spans several positions of an example, so it differs from n_tried) and first_position
    (``role_first_positions``). Null keys (an MLP's head) form groups too, sorted last."""
    table = (
        detail.groupby(keys, sort=True, dropna=False)
        .agg(
            n_tried=("failed", "size"),
            n_failed=("failed", "sum"),
            mean_logprob_drop=("logprob_drop", "mean"),
            n_examples=("example_id", "nunique"),
        )
        .reset_index()
    )
    table["fail_rate"] = 100.0 * table["n_failed"] / table["n_tried"]
    columns = [*keys, "n_tried", "n_failed", "fail_rate", "mean_logprob_drop"]
    if "position" in keys:
        table["role"] = table["position"].map(position_roles(detail))
        columns.insert(keys.index("position") + 1, "role")
    if "role" in keys:
        table["first_position"] = table["role"].map(role_first_positions(detail))
        columns += ["n_examples", "first_position"]
    return table[columns]
