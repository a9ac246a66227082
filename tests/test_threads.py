"""Small per-photo ops run on one thread and the counts come back afterwards."""

from __future__ import annotations

from pathlib import Path

import faiss
import pytest
import torch
from threadpoolctl import ThreadpoolController

from shoplens.threads import blas_threads, faiss_threads, small_op_threads, torch_threads


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


def _numpy_blas_threads() -> list[int]:
    """Threads of numpy's own BLAS (a wheel's, under numpy.libs); other packages bring theirs."""
    counts = [lib["num_threads"] for lib in ThreadpoolController().info() if lib["user_api"] == "blas" and "numpy" in lib["filepath"]]
    if not counts:
        pytest.skip("numpy's BLAS is not a wheel's library here (found by its path)")
    return counts


def test_blas_threads_caps_numpy_and_restores() -> None:
    with ThreadpoolController().limit(limits=2, user_api="blas"):  # whatever the machine's default
        before = _numpy_blas_threads()
        with blas_threads(1):
            assert _numpy_blas_threads() == [1] * len(before)
        assert _numpy_blas_threads() == before == [2] * len(before)


def test_a_search_runs_numpy_on_one_blas_thread(tmp_path: Path, synthetic_catalogue: Path) -> None:
    from shoplens import Shoplens

    seen: list[list[int]] = []
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-other_product", "local.enabled": False}) as lens:
        lens.index(synthetic_catalogue)
        emb = lens.pipeline.embedders["other_product"]
        project = emb.project
        emb.project = lambda raw: seen.append(_numpy_blas_threads()) or project(raw)  # type: ignore[method-assign]
        with ThreadpoolController().limit(limits=2, user_api="blas"):  # whatever the machine's default
            before = _numpy_blas_threads()
            lens.search([synthetic_catalogue.parent / "img" / "p0.png"])
            assert seen and all(counts == [1] * len(before) for counts in seen)
            assert _numpy_blas_threads() == before == [2] * len(before)
