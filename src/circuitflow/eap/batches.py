"""Clean/corrupt pairs as padded token batches, and the logit-difference metric on them."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from circuitflow.batching import right_padded
from circuitflow.errors import TableError
from circuitflow.tables import read_table

PAIR_COLUMNS = [
    "pair_id", "clean_token_ids", "corrupt_token_ids", "clean_answer_id", "corrupt_answer_id", "batch"
]


@dataclass
class PairBatch:
    clean: torch.Tensor  # [batch, pos] token ids, right-padded
    corrupt: torch.Tensor
    last: torch.Tensor  # [batch] each row's last real position, where the metric is read
    clean_answer: torch.Tensor  # [batch] token ids
    corrupt_answer: torch.Tensor

    def __len__(self) -> int:
        return len(self.last)

    def rows(self, index: slice) -> "PairBatch":
        return PairBatch(self.clean[index], self.corrupt[index], self.last[index],
                         self.clean_answer[index], self.corrupt_answer[index])


def read_pairs(path) -> pd.DataFrame:
    """The pairs table a stage works on; an empty one is an error naming the file."""
    table = read_table(path, PAIR_COLUMNS)
    if table.empty:
        raise TableError(f"{path}: no pairs (rule corrupt_pairs found none)")
    return table


def pair_batches(pairs: pd.DataFrame, pad_id: int, device: torch.device | str = "cpu"):
    """One PairBatch per value of ``batch``, in increasing order.

    Rows of a batch may differ in length: they are padded on the right, which a causal model never
    lets reach a real position, so no attention mask is needed.
    """
    batches = []
    for _, rows in pairs.sort_values(["batch", "pair_id"]).groupby("batch", sort=True):
        lengths = [len(ids) for ids in rows["clean_token_ids"]]
        corrupt_lengths = [len(ids) for ids in rows["corrupt_token_ids"]]
        bad = [pid for pid, n, m in zip(rows["pair_id"], lengths, corrupt_lengths) if n != m]
        if bad:
            raise TableError(f"pairs {bad[:5]}: clean and corrupt prompts differ in token length")

        def padded(column: str) -> torch.Tensor:
            return right_padded(list(rows[column]), pad_id).to(device)

        batches.append(PairBatch(
            clean=padded("clean_token_ids"),
            corrupt=padded("corrupt_token_ids"),
            last=torch.tensor(lengths, device=device) - 1,
            clean_answer=torch.tensor(rows["clean_answer_id"].tolist(), device=device),
            corrupt_answer=torch.tensor(rows["corrupt_answer_id"].tolist(), device=device),
        ))
    return batches


def logit_diff(final: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Per row: logit(clean answer) − logit(corrupt answer), from the logits [batch, vocab] at
    the row's last real position."""
    return final.gather(1, batch.clean_answer[:, None]).squeeze(1) - final.gather(
        1, batch.corrupt_answer[:, None]
    ).squeeze(1)
