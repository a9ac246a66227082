"""Thread counts for the small per-photo work of a search.

A search runs many small ops per photo besides the backbone pass: torch
ops (the garment head, decoding its maps, the intent rule, keypoint
similarities) and FAISS searches (visual words, the vector index). Each
op spread over several OpenMP threads ends in a barrier that waits for
every thread; on a CPU shared with other work a descheduled thread holds
the barrier for a scheduler slice, so such ops cost many times their
arithmetic (the garment head: 1.9 s with 2 threads, 21 ms with one, on the
busy 2-core benchmark machine; docs/decisions.md). They run on one
thread; large passes (backbones, training, index building) keep the
configured count, and so does an index search of several vectors in a
large partition (:func:`index_search_threads`). Both settings are the
calling thread's (OpenMP): work on threads already running keeps its own
count meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from typing import Any

import faiss
import torch
from threadpoolctl import ThreadpoolController

#: Intra-op threads for per-photo torch work that is too small to share out.
SMALL_OP_THREADS = 1
#: FAISS's own thread count (OpenMP's default: the cores, or OMP_NUM_THREADS), before any scoping.
FAISS_THREADS = faiss.omp_get_max_threads()
#: A search of several vectors at once (an outfit's garments) in a partition at least this large is
#: no small op. Two threads, 8 garments: 19.9 instead of 33.2 ms against 500k apparel vectors (the
#: whole search 138.1 vs 154.8 ms p50), 5.4 instead of 8.4 against 50k, where the whole search did
#: not get faster (docs/decisions.md). The threshold lies between the two.
PARALLEL_SEARCH_MIN_VECTORS = 250_000


@contextmanager
def _scoped(get: Callable[[], int], set_: Callable[[int], None], n: int) -> Iterator[None]:
    """Set a thread count to ``n`` (0: leave as is) for the block, then restore it."""
    old = get()
    if n <= 0 or n == old:
        yield
        return
    set_(n)
    try:
        yield
    finally:
        set_(old)


def torch_threads(n: int = SMALL_OP_THREADS) -> AbstractContextManager[None]:
    """Run the block's torch ops on ``n`` intra-op threads (0: leave as is), then restore the count."""
    return _scoped(torch.get_num_threads, torch.set_num_threads, n)


def faiss_threads(n: int = SMALL_OP_THREADS) -> AbstractContextManager[None]:
    """Run the block's FAISS searches on ``n`` OpenMP threads (0: leave as is), then restore the count."""
    return _scoped(faiss.omp_get_max_threads, faiss.omp_set_num_threads, n)


def index_search_threads(n_queries: int, n_vectors: Callable[[], int]) -> AbstractContextManager[None]:
    """FAISS threads for one index search: one, or FAISS's own count for several queries in a large partition."""
    if n_queries > 1 and n_vectors() >= PARALLEL_SEARCH_MIN_VECTORS:
        return faiss_threads(FAISS_THREADS)
    return faiss_threads(SMALL_OP_THREADS)


@contextmanager
def small_op_threads(n: int = SMALL_OP_THREADS) -> Iterator[None]:
    """:func:`torch_threads` and :func:`faiss_threads` together."""
    with torch_threads(n), faiss_threads(n):
        yield


@lru_cache(maxsize=1)
def _blas_libraries() -> Any:
    # The BLAS libraries loaded by the first search: numpy's, and OpenCV's and FAISS's own copies
    # (torch links its own statically and is not among them).
    return ThreadpoolController().select(user_api="blas")


def blas_thread_count() -> int:
    """The most threads any loaded BLAS library will use now (1 inside :func:`blas_threads`)."""
    return max((lib.num_threads for lib in _blas_libraries().lib_controllers), default=1)


def blas_threads(n: int = SMALL_OP_THREADS) -> AbstractContextManager[Any]:
    """Run the block's BLAS products (numpy's above all) on ``n`` threads, then restore the count.

    A search's numpy products are small (a projection head, the visual words
    of one photo), and OpenBLAS's worker threads keep spinning for a while
    after each: the backbone pass that follows on the same two cores then
    ran 1.5-6 ms slower (docs/decisions.md). The setting is the
    process's, not the thread's: overlapping searches can only restore a
    count the other just set, a matter of speed, never of results.
    """
    return _blas_libraries().limit(limits=n)
