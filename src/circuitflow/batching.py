"""Run work in batches, halving the batch when the GPU runs out of memory."""

from __future__ import annotations

import logging
from typing import Callable, Sequence, TypeVar

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_batches(
    items: Sequence[Item], batch_size: int, process: Callable[[Sequence[Item]], Result],
    desc: str = "", show_progress: bool = True,
) -> list[Result]:
    """``process`` consecutive slices of ``items``, in order.

    A CUDA out-of-memory error halves the slice and retries it, so a batch size that fits one
    GPU still runs on a smaller one; only a single item that does not fit is an error.
    """
    results = []
    start = 0
    with tqdm(total=len(items), desc=desc, disable=not show_progress) as bar:
        while start < len(items):
            chunk = items[start : start + batch_size]
            try:
                results.append(process(chunk))
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise
                torch.cuda.empty_cache()
                batch_size = max(1, batch_size // 2)
                log.warning("CUDA out of memory: retrying with batch size %d", batch_size)
                continue
            start += len(chunk)
            bar.update(len(chunk))
    return results
