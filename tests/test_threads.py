"""Small per-photo ops run on one thread and the counts come back afterwards."""

from __future__ import annotations

import faiss
import pytest
import torch

from shoplens.threads import faiss_threads, small_op_threads, torch_threads


@pytest.fixture
def two_threads() -> object:
    t, f = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    yield
    torch.set_num_threads(t)
    faiss.omp_set_num_threads(f)


def test_counts_are_set_and_restored(two_threads: object) -> None:
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == 2
    with pytest.raises(RuntimeError), small_op_threads():
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (1, 1)
        raise RuntimeError("restored on errors too")
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (2, 2)
    with torch_threads(0), faiss_threads(0):  # 0: leave as is
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (2, 2)
