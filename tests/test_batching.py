import pytest
import torch

from circuitflow.batching import Batches


def test_out_of_memory_halves_the_batch_for_good_and_keeps_order():
    sizes = []

    def process(chunk):
        sizes.append(len(chunk))
        if len(chunk) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [x * 10 for x in chunk]

    batches = Batches(16)
    results = batches.map(list(range(11)), process)
    assert [x for chunk in results for x in chunk] == [x * 10 for x in range(11)]
    assert sizes[:3] == [11, 8, 4] and max(sizes[3:]) <= 3
    assert batches.size == 2
    sizes.clear()
    batches.map(list(range(5)), process)
    assert sizes == [2, 2, 1]  # the next call starts at the size that fitted


def test_single_item_that_does_not_fit_is_an_error():
    def process(chunk):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        Batches(2).map([1, 2], process)


def test_right_padded_keeps_each_sequence_and_pads_after_it():
    from circuitflow.batching import right_padded

    out = right_padded([[5, 6, 7], [8], []], pad_value=-1)
    assert out.dtype == torch.long
    assert out.tolist() == [[5, 6, 7], [8, -1, -1], [-1, -1, -1]]
