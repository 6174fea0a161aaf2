import pytest
import torch

from circuitflow.batching import map_batches


def test_out_of_memory_halves_the_batch_and_keeps_order():
    sizes = []

    def process(chunk):
        sizes.append(len(chunk))
        if len(chunk) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [x * 10 for x in chunk]

    results = map_batches(list(range(11)), 16, process, show_progress=False)
    assert [x for chunk in results for x in chunk] == [x * 10 for x in range(11)]
    assert sizes[:3] == [11, 8, 4] and max(sizes[3:]) <= 3


def test_single_item_that_does_not_fit_is_an_error():
    def process(chunk):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        map_batches([1, 2], 2, process, show_progress=False)
