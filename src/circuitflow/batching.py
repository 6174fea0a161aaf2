"""Batches: right-padded token tensors, and sizes that halve, for good, when the GPU runs out
of memory."""

from __future__ import annotations

import logging
from typing import Callable, Sequence, TypeVar

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


def right_padded(sequences: Sequence[Sequence[int]], pad_value: int) -> torch.Tensor:
    """[len(sequences), longest] long tensor, each sequence followed by ``pad_value``.

    Right padding needs no attention mask for a causal LM: real positions never see it.
    """
    width = max(map(len, sequences), default=0)
    out = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    return out


class Batches:
    """Splits work into batches of ``size`` items.

    A CUDA out-of-memory error halves ``size`` and retries the batch; the smaller size is kept
    for later calls, so a batch size that fits one GPU still runs on a smaller one. Only a single
    item that does not fit is an error.
    """

    def __init__(self, size: int):
        self.size = max(1, size)

    def map(
        self, items: Sequence[Item], process: Callable[[Sequence[Item]], Result],
        desc: str = "", show_progress: bool = False,
    ) -> list[Result]:
        """``process`` consecutive slices of ``items``, in order."""
        results = []
        start = 0
        with tqdm(total=len(items), desc=desc, disable=not show_progress) as bar:
            while start < len(items):
                chunk = items[start : start + self.size]
                try:
                    results.append(process(chunk))
                except torch.cuda.OutOfMemoryError:
                    if self.size == 1:
                        raise
                    torch.cuda.empty_cache()
                    self.size = max(1, self.size // 2)
                    log.warning("CUDA out of memory: retrying with batches of %d", self.size)
                    continue
                start += len(chunk)
                bar.update(len(chunk))
        return results
