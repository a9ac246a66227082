"""Small per-photo ops run on one thread and the counts come back afterwards."""

from __future__ import annotations

from pathlib import Path

import faiss
import pytest
import torch
from threadpoolctl import ThreadpoolController

from shoplens import threads
from shoplens.threads import blas_threads, faiss_threads, index_search_threads, small_op_threads, torch_threads


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


def test_several_queries_in_a_large_partition_search_on_faiss_own_threads(two_threads: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "FAISS_THREADS", 2)
    asked: list[int] = []

    def count() -> int:
        asked.append(1)
        return threads.PARALLEL_SEARCH_MIN_VECTORS

    with small_op_threads():
        with index_search_threads(1, count):  # one query: a small op, whatever the partition
            assert faiss.omp_get_max_threads() == 1
        assert not asked, "the partition is only counted for several queries"
        with index_search_threads(8, count):
            assert faiss.omp_get_max_threads() == 2
        with index_search_threads(8, lambda: threads.PARALLEL_SEARCH_MIN_VECTORS - 1):
            assert faiss.omp_get_max_threads() == 1
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == 2


@pytest.mark.slow
def test_an_outfit_search_in_a_large_partition_uses_faiss_own_threads(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    from shoplens import Shoplens

    clothing = data_dir / "clothing"
    with open(clothing / "labels.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] in ("T-Shirt", "Pants", "Shoes")][:12]
    catalogue = tmp_path / "catalogue.csv"
    catalogue.write_text("product_id,image,category,domain\n" + "".join(f"c{i},{clothing / r['image']},{r['label']},apparel\n" for i, r in enumerate(rows)))
    monkeypatch.setattr(threads, "FAISS_THREADS", 2)
    monkeypatch.setattr(threads, "PARALLEL_SEARCH_MIN_VECTORS", len(rows))  # this partition counts as large
    outfit = sorted((data_dir / "outfits" / "images").glob("*.jpg"))[:6]
    seen: list[tuple[int, int]] = []
    with Shoplens(tmp_path / "store", **{"intent.classifier": "test-apparel"}) as lens:
        lens.index(catalogue)
        real = lens.store.search

        def spy(domain: str, queries: object, *a: object, **k: object) -> object:
            seen.append((len(queries), faiss.omp_get_max_threads()))  # type: ignore[arg-type]
            return real(domain, queries, *a, **k)  # type: ignore[arg-type]

        lens.store.search = spy  # type: ignore[method-assign]
        lens.search(outfit)
    assert seen and {threads_ for n, threads_ in seen if n > 1} == {2}, seen
    assert all(threads_ == 1 for n, threads_ in seen if n == 1), seen
