"""An inverted file over visual words: word -> the images that hold it.

A :class:`Postings` block is immutable: the entries (image row, ASMK
signature) of a batch of images, sorted by word, with CSR offsets. Scoring a
query touches only the postings of the query's words, so its cost grows with
the number of entries on those words (about ``N · m / K`` per word for ``N``
images of ``m`` distinct words in a vocabulary of ``K``), not with ``N``
times the cost of comparing two images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .asmk import SIGNATURE_WORDS, hamming

#: Below this many entries per query word on average, scoring whole posting lists costs less
#: than looking rows up in them (about 31 ns an entry against 12 µs a word for 200 rows, 2 cores).
FULL_SCORE_MAX_MEAN_POSTINGS = 400


@dataclass(frozen=True)
class Postings:
    """CSR inverted file of one block of images (rows 0 … n-1)."""

    ptr: np.ndarray  # (K + 1,) int64 offsets by word
    rows: np.ndarray  # (E,) int32 image row of each entry
    sigs: np.ndarray  # (E, 2) uint64 ASMK signature of each entry

    @property
    def vocabulary_size(self) -> int:
        return int(self.ptr.shape[0] - 1)

    @property
    def nbytes(self) -> int:
        return int(self.ptr.nbytes + self.rows.nbytes + self.sigs.nbytes)

    @classmethod
    def build(cls, images: Sequence[tuple[np.ndarray, np.ndarray]], vocabulary_size: int) -> Postings:
        """``images``: per image, its distinct words (m,) and signatures (m, 2), in row order."""
        counts = np.array([len(w) for w, _ in images], dtype=np.int64)
        if counts.sum() == 0:
            return cls(np.zeros(vocabulary_size + 1, np.int64), np.zeros(0, np.int32),
                       np.zeros((0, SIGNATURE_WORDS), np.uint64))
        words = np.concatenate([w for w, _ in images])
        sigs = np.concatenate([s for _, s in images])
        rows = np.repeat(np.arange(len(images), dtype=np.int32), counts)
        order = np.argsort(words, kind="stable")
        ptr = np.zeros(vocabulary_size + 1, np.int64)
        np.cumsum(np.bincount(words, minlength=vocabulary_size), out=ptr[1:])
        return cls(ptr, rows[order], np.ascontiguousarray(sigs[order]))

    def image_words(self, n_rows: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Back from CSR to per-row (words, signatures), e.g. to merge blocks."""
        words = np.repeat(np.arange(self.vocabulary_size, dtype=np.int64), np.diff(self.ptr))
        order = np.argsort(self.rows, kind="stable")
        bounds = np.searchsorted(self.rows[order], np.arange(n_rows + 1))
        w, s = words[order], self.sigs[order]
        return [(w[bounds[i]:bounds[i + 1]], s[bounds[i]:bounds[i + 1]]) for i in range(n_rows)]

    def score(self, q_words: np.ndarray, q_sigs: np.ndarray, q_weights: np.ndarray, n_rows: int,
              table: np.ndarray) -> np.ndarray:
        """Σ over shared words of ``q_weights[w] · table[hamming]``, per row: (n_rows,) float32.

        ``table`` is ASMK's selectivity by Hamming distance (:func:`~shoplens.local.asmk.selectivity_table`).
        """
        starts = self.ptr[q_words]
        lens = self.ptr[q_words + 1] - starts
        total = int(lens.sum())
        if total == 0:
            return np.zeros(n_rows, np.float32)
        which = np.repeat(np.arange(len(q_words)), lens)
        entry = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(total)
        contrib = table[hamming(q_sigs[which], self.sigs[entry])] * q_weights[which]
        return np.bincount(self.rows[entry], weights=contrib, minlength=n_rows).astype(np.float32)

    def score_rows(self, q_words: np.ndarray, q_sigs: np.ndarray, q_weights: np.ndarray, rows: np.ndarray,
                   table: np.ndarray) -> np.ndarray:
        """:meth:`score` of the given ``rows`` only (sorted, distinct): (len(rows),) float32.

        Looks each row up in the postings of each query word (binary search:
        a word's entries are sorted by row), so the cost grows with the query's
        words times ``len(rows)``, not with the catalogue.
        """
        rows = np.asarray(rows, np.int32)
        if not len(rows):
            return np.zeros(0, np.float32)
        starts, ends = self.ptr[q_words], self.ptr[q_words + 1]
        held = np.flatnonzero(ends > starts)
        if not len(held):
            return np.zeros(len(rows), np.float32)
        if int((ends - starts).sum()) <= FULL_SCORE_MAX_MEAN_POSTINGS * len(held):
            return self.score(q_words, q_sigs, q_weights, int(rows.max()) + 1, table)[rows]  # short lists: cheaper whole
        # Where each row would sit in each held word's postings (one C search per word).
        pos = np.stack([np.searchsorted(self.rows[starts[j]:ends[j]], rows) for j in held])  # (W, R)
        entry = np.minimum(starts[held, None] + pos, ends[held, None] - 1)
        hit = self.rows[entry] == rows[None, :]
        w_idx, r_idx = np.nonzero(hit)
        j = held[w_idx]
        contrib = table[hamming(q_sigs[j], self.sigs[entry[w_idx, r_idx]])] * q_weights[j]
        return np.bincount(r_idx, weights=contrib, minlength=len(rows)).astype(np.float32)
