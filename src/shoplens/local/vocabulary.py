"""A visual vocabulary: k-means centroids of RootSIFT descriptors.

Every descriptor is quantised to its nearest centroid (its *visual word*);
an image becomes a sparse set of words, which the local index stores.
The vocabulary is trained once (from the catalogue's own descriptors, or
from any collection of photos) and then stays fixed, so images can be
added and removed without touching the others.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from importlib import resources
from pathlib import Path

import faiss
import numpy as np

from ..errors import StoreError
from ..threads import blas_thread_count
from ._io import write_npy
from .features import DESCRIPTOR_DIM

log = logging.getLogger(__name__)

#: File (in ``shoplens/local/data``) of the vocabulary :meth:`Vocabulary.generic` returns.
GENERIC = "vocabulary-generic-4096.npy"
#: Its uint8 centroids are RootSIFT components times this (centroid components stay under 0.5).
GENERIC_SCALE = 512.0
#: Vocabularies of more words than this are searched approximately (HNSW); smaller ones exactly,
#: by one matrix product (BLAS): for the 4,096-word generic vocabulary and ~900 query
#: descriptors that is exact and faster than HNSW (docs/decisions.md).
EXACT_ASSIGN_MAX_WORDS = 16384
#: Descriptors per matrix product of an exact assignment (bounds its (rows, words) scratch).
ASSIGN_CHUNK = 2048
#: When BLAS runs on one thread (as in a search, shoplens.threads.blas_threads: OpenBLAS's own
#: threads keep spinning after a product and slow the next backbone pass), an exact assignment
#: of at least twice this many descriptors is split by rows over :data:`ASSIGN_THREADS` threads
#: that wait on a queue instead: 12.4 -> 7.0 ms for a query's 1,000 descriptors on 2 cores, the
#: same words (docs/decisions.md). With BLAS on several threads (indexing) one product
#: is already shared out (7.0 ms there); splitting it as well, each block on one BLAS thread, was
#: slower (10.2 ms).
PARALLEL_ASSIGN_MIN_ROWS = 256
#: Threads of an exact assignment (the cores, at most 4).
ASSIGN_THREADS = max(1, min(4, os.cpu_count() or 1))
#: Vocabularies of more words than this are trained by a two-level k-means.
FLAT_TRAIN_MAX_WORDS = 2048


class Vocabulary:
    """``size`` centroids in RootSIFT space and a nearest-centroid search."""

    def __init__(self, centroids: np.ndarray) -> None:
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        if centroids.ndim != 2 or centroids.shape[1] != DESCRIPTOR_DIM or len(centroids) < 2:
            raise ValueError(f"centroids must be (k >= 2, {DESCRIPTOR_DIM}), got {centroids.shape}")
        centroids.setflags(write=False)
        self.centroids = centroids
        self._hnsw: faiss.Index | None = None
        self._affine: np.ndarray | None = None
        if len(centroids) > EXACT_ASSIGN_MAX_WORDS:
            self._hnsw = faiss.IndexHNSWFlat(DESCRIPTOR_DIM, 32)
            self._hnsw.hnsw.efSearch = 32  # type: ignore[attr-defined]
            self._hnsw.add(centroids)
        else:
            # x . c - |c|^2 / 2 for every word c in one product [x, 1] @ [[C^T], [-|C|^2 / 2]]: the
            # nearest word has the largest value (|x - c|^2 = |x|^2 - 2 (x . c - |c|^2 / 2)).
            half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
            self._affine = np.ascontiguousarray(np.vstack([centroids.T, -half_norms[None, :]]), dtype=np.float32)

    @property
    def size(self) -> int:
        return int(self.centroids.shape[0])

    @classmethod
    def train(cls, descriptors: np.ndarray, size: int, *, niter: int = 20, seed: int = 0,
              max_points_per_word: int = 32) -> Vocabulary:
        """k-means over RootSIFT ``descriptors`` (n, 128).

        At most ``max_points_per_word`` × ``size`` descriptors are used. Beyond
        :data:`FLAT_TRAIN_MAX_WORDS` words the k-means is two-level (a coarse
        k-means, then one per coarse cell with words in proportion to its
        population), which costs about ``sqrt(size)`` times less and loses
        little: the words are then searched as one flat set.
        """
        x = np.ascontiguousarray(descriptors, dtype=np.float32)
        if len(x) < 2 * size:
            raise ValueError(
                f"a vocabulary of {size} words needs at least {2 * size} descriptors, got {len(x)}: "
                "use a smaller vocabulary or more training photos"
            )
        rng = np.random.default_rng(seed)
        cap = max_points_per_word * size
        if len(x) > cap:
            x = x[np.sort(rng.choice(len(x), cap, replace=False))]
        if size <= FLAT_TRAIN_MAX_WORDS:
            centroids = _kmeans(x, size, niter, seed)
        else:
            coarse = _kmeans(x, int(np.sqrt(size)), niter, seed)
            _, cell = _flat_search(coarse, x)
            pop = np.bincount(cell, minlength=len(coarse))
            quota = _apportion(pop, size)
            parts = []
            for c in np.flatnonzero(quota):
                members = x[cell == c]
                k = int(min(quota[c], len(members)))
                parts.append(members if k == len(members) else _kmeans(members, k, niter, seed + 1 + int(c)))
            centroids = np.concatenate(parts)
        log.info("trained a vocabulary of %d words from %d descriptors", len(centroids), len(x))
        return cls(centroids)

    def assign(self, descriptors: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest words of each descriptor: (words (n, k) int64, squared distances (n, k))."""
        x = np.ascontiguousarray(descriptors, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        if self._affine is None:
            assert self._hnsw is not None
            dist, words = self._hnsw.search(x, k)
            return words.astype(np.int64, copy=False), dist
        k = min(k, self.size)  # (HNSW pads with -1 instead)
        words = np.empty((len(x), k), np.int64)
        dist = np.empty((len(x), k), np.float32)
        parts = min(ASSIGN_THREADS, len(x) // PARALLEL_ASSIGN_MIN_ROWS) if blas_thread_count() == 1 else 1
        bounds = np.linspace(0, len(x), max(parts, -(-len(x) // ASSIGN_CHUNK)) + 1).astype(int)
        spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))  # row blocks of at most ASSIGN_CHUNK
        if parts < 2:
            for span in spans:
                self._assign_rows(x, k, span, words, dist)
        else:  # the blocks on the shared threads, each product on BLAS's one thread
            list(_assign_pool().map(lambda span: self._assign_rows(x, k, span, words, dist), spans))
        return words, np.maximum(dist, 0.0, out=dist)

    def _assign_rows(self, x: np.ndarray, k: int, span: tuple[int, int], words: np.ndarray, dist: np.ndarray) -> None:
        """Exact ``k`` nearest words of ``x[start:stop]``, written into ``words`` and ``dist`` (unclamped)."""
        assert self._affine is not None
        start, stop = span
        part = x[start:stop]
        g = np.hstack([part, np.ones((len(part), 1), np.float32)]) @ self._affine
        if k == 1:
            nearest = g.argmax(axis=1)[:, None]
        else:
            nearest = np.argpartition(g, -k, axis=1)[:, -k:]
            nearest = np.take_along_axis(nearest, np.argsort(-np.take_along_axis(g, nearest, 1), axis=1), 1)
        words[start:stop] = nearest
        dist[start:stop] = np.einsum("ij,ij->i", part, part)[:, None] - 2.0 * np.take_along_axis(g, nearest, 1)

    @classmethod
    def generic(cls) -> Vocabulary:
        """The vocabulary shipped with shoplens (:data:`GENERIC`), so an index needs no training.

        Trained by ``benchmarks/local_vocabulary.py`` on photos that are neither
        groceries nor any catalogue's (clothing, street outfits, landscapes);
        centroids stored as uint8 (RootSIFT components × :data:`GENERIC_SCALE`).
        """
        return _generic()

    def save(self, path: Path) -> None:
        write_npy(path, self.centroids.astype(np.float32))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        try:
            return cls(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as err:
            raise StoreError(f"{path}: cannot read the visual vocabulary ({err})") from None


def _kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    km = faiss.Kmeans(DESCRIPTOR_DIM, k, niter=niter, seed=seed, max_points_per_centroid=1 << 30,
                      min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x))
    return np.asarray(km.centroids, np.float32)


def _flat_search(centroids: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatL2(DESCRIPTOR_DIM)
    index.add(np.ascontiguousarray(centroids))
    dist, nearest = index.search(np.ascontiguousarray(x), 1)
    return dist[:, 0], nearest[:, 0]


def _apportion(population: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` into integer shares proportional to ``population`` (largest remainders)."""
    exact = population / max(1, population.sum()) * total
    share = np.floor(exact).astype(np.int64)
    rest = total - int(share.sum())
    if rest > 0:
        share[np.argsort(-(exact - share), kind="stable")[:rest]] += 1
    return share


@lru_cache(maxsize=1)
def _assign_pool() -> ThreadPoolExecutor:
    """The threads exact assignments share (made on first use)."""
    return ThreadPoolExecutor(ASSIGN_THREADS, thread_name_prefix="shoplens-words")


if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads: it makes its own pool
    os.register_at_fork(after_in_child=_assign_pool.cache_clear)


@lru_cache(maxsize=1)
def _generic() -> Vocabulary:
    # One shared instance (its search structure takes a moment to build); vocabularies are never modified.
    with resources.files(__package__).joinpath("data", GENERIC).open("rb") as f:
        raw = np.load(f, allow_pickle=False)
    return Vocabulary(raw.astype(np.float32) / GENERIC_SCALE)
