"""The examples an ablation runs on: the correct ones of clean.parquet, as token tensors."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from circuitflow.batching import right_padded
from circuitflow.tables import read_table

log = logging.getLogger(__name__)

CLEAN_COLUMNS = ["example_id", "correct", "prompt_token_ids", "answer_token_ids", "token_roles"]


@dataclass
class AblationExamples:
    example_ids: np.ndarray  # int64 [N]
    tokens: torch.Tensor  # long [N, T_max]: prompt + answer, right-padded with ``pad_id``
    lengths: torch.Tensor  # long [N]: T, prompt + answer tokens
    n_prompt: torch.Tensor  # long [N]
    roles: list[list[str]]  # one role per token

    def __len__(self) -> int:
        return len(self.example_ids)

    def to(self, device) -> "AblationExamples":
        return AblationExamples(
            self.example_ids, self.tokens.to(device), self.lengths.to(device),
            self.n_prompt.to(device), self.roles,
        )


def make_examples(
    example_ids, prompts: list[list[int]], answers: list[list[int]], roles: list[list[str]],
    pad_id: int,
) -> AblationExamples:
    seqs = [list(p) + list(a) for p, a in zip(prompts, answers)]
    return AblationExamples(
        example_ids=np.asarray(example_ids, dtype=np.int64),
        tokens=right_padded(seqs, pad_id),
        lengths=torch.tensor([len(s) for s in seqs], dtype=torch.long),
        n_prompt=torch.tensor([len(p) for p in prompts], dtype=torch.long),
        roles=[list(r) for r in roles],
    )


def select_examples(clean_path: str, n_examples: int, pad_id: int) -> AblationExamples:
    """The first ``n_examples`` correct examples (by example_id) with a non-empty answer."""
    table = read_table(clean_path, columns=CLEAN_COLUMNS).sort_values("example_id")
    table = table[table["correct"] & (table["answer_token_ids"].map(len) > 0)].head(n_examples)
    if table.empty:
        # A model may get a whole command set wrong; its ablation tables are then empty.
        log.warning("%s: no correct example to ablate", clean_path)
    return make_examples(
        table["example_id"], table["prompt_token_ids"].tolist(),
        table["answer_token_ids"].tolist(), table["token_roles"].tolist(), pad_id,
    )
