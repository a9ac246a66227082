"""The visual words of indexed images, scored against a query's words.

A :class:`Postings` block is immutable: for each image of a batch (rows
0 … n-1), its distinct visual words and their ASMK signatures, stored image
by image (CSR offsets by row). A query's words are looked up in a dense
table of the vocabulary's size, so an image's score reads its own entries
and nothing else:

- :meth:`score_rows` scores given rows only (the global search's ~200
  candidates): it reads their entries, contiguous blocks, so its cost grows
  with the candidates and not with the catalogue (0.96 ms against 5.06 ms
  for a binary search in the postings of each query word, the older
  layout, in a segment of 49,809 images; docs/decisions.md).
- :meth:`score` scores every row: one pass over all entries, in chunks.

Stored by word instead (an inverted file), a query would read only the
entries of its own words, about a sixth of them. But finding a candidate in
each word's list then costs a binary search per word and candidate, and
the entries need an image row each: 4 bytes more per entry than a word
(2 bytes) beside the 16-byte signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from .asmk import SIGNATURE_WORDS, hamming

#: Entries scored at once: bounds the temporary arrays of a whole-segment score (~40 bytes an entry).
#: (Signature rows are gathered with ``np.take(…, axis=0)``: ten times faster than ``sigs[idx]`` here.)
CHUNK_ENTRIES = 1 << 20


def word_dtype(vocabulary_size: int) -> np.dtype:
    """uint16 word ids where the vocabulary allows (65,536 words or fewer), else int32."""
    return np.dtype(np.uint16 if vocabulary_size <= 1 << 16 else np.int32)


@dataclass(frozen=True)
class Postings:
    """Words and signatures of one block of images, image by image."""

    row_ptr: np.ndarray  # (n + 1,) int64 offsets of each row's entries
    words: np.ndarray  # (E,) word of each entry (word_dtype), each row's words distinct
    sigs: np.ndarray  # (E, 2) uint64 ASMK signature of each entry
    vocabulary_size: int

    @property
    def n_rows(self) -> int:
        return int(self.row_ptr.shape[0] - 1)

    @property
    def nbytes(self) -> int:
        return int(self.row_ptr.nbytes + self.words.nbytes + self.sigs.nbytes)

    @classmethod
    def build(cls, images: Sequence[tuple[np.ndarray, np.ndarray]], vocabulary_size: int) -> Postings:
        """``images``: per image, its distinct words (m,) and signatures (m, 2), in row order."""
        row_ptr = np.zeros(len(images) + 1, np.int64)
        np.cumsum([len(w) for w, _ in images], out=row_ptr[1:])
        dtype = word_dtype(vocabulary_size)
        if row_ptr[-1] == 0:
            return cls(row_ptr, np.zeros(0, dtype), np.zeros((0, SIGNATURE_WORDS), np.uint64), vocabulary_size)
        words = np.concatenate([np.asarray(w) for w, _ in images])
        if words.min() < 0 or words.max() >= vocabulary_size:
            raise ValueError(f"words must lie in [0, {vocabulary_size})")
        sigs = np.concatenate([s for _, s in images])
        return cls(row_ptr, words.astype(dtype), np.ascontiguousarray(sigs, np.uint64), vocabulary_size)

    @classmethod
    def from_inverted(cls, ptr: np.ndarray, rows: np.ndarray, sigs: np.ndarray, n_rows: int) -> Postings:
        """The same postings from the word-sorted layout (CSR by word, an image row per entry) of older segments."""
        vocabulary_size = int(len(ptr) - 1)
        words = np.repeat(np.arange(vocabulary_size, dtype=word_dtype(vocabulary_size)), np.diff(ptr))
        order = np.argsort(rows, kind="stable")  # by row, and by word within a row
        row_ptr = np.zeros(n_rows + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=n_rows), out=row_ptr[1:])
        return cls(row_ptr, words[order], np.ascontiguousarray(sigs[order]), vocabulary_size)

    def image_words(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row, its (words int64, signatures): what :meth:`build` takes."""
        return [(self.words[a:b].astype(np.int64), self.sigs[a:b]) for a, b in pairwise(self.row_ptr.tolist())]

    def words_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """All words held by the given rows, concatenated: (sum of their word counts,) int64."""
        return self.words[self._entries(np.asarray(rows, np.int64))[0]].astype(np.int64)

    def word_counts(self, alive: np.ndarray) -> np.ndarray:
        """How many rows where ``alive`` holds each word: (K,) int64."""
        keep = np.repeat(np.asarray(alive, bool), np.diff(self.row_ptr))
        return np.bincount(self.words[keep], minlength=self.vocabulary_size).astype(np.int64)

    def _entries(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Entry indices of ``rows``, in order, and the position in ``rows`` each belongs to."""
        starts = self.row_ptr[rows]
        lens = self.row_ptr[rows + 1] - starts
        total = int(lens.sum())
        which = np.repeat(np.arange(len(rows)), lens)
        return np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(total), which

    def score(self, q_words: np.ndarray, q_sigs: np.ndarray, q_weights: np.ndarray, table: np.ndarray) -> np.ndarray:
        """Every row's Σ over shared words of ``q_weights[w] · table[hamming]``: (n_rows,) float32.

        ``q_words`` are distinct (as :func:`~shoplens.local.asmk.aggregate` gives them);
        ``table`` is ASMK's selectivity by Hamming distance (:func:`~shoplens.local.asmk.selectivity_table`).
        One pass over the entries, :data:`CHUNK_ENTRIES` at a time.
        """
        n = self.n_rows
        out = np.zeros(n, np.float32)
        if not n or not len(q_words):
            return out
        slot, counts = self._slots(q_words), np.diff(self.row_ptr)
        a = 0
        while a < n:  # rows a … b-1: about CHUNK_ENTRIES entries, at least one row
            b = max(a + 1, int(np.searchsorted(self.row_ptr, self.row_ptr[a] + CHUNK_ENTRIES, side="right")) - 1)
            shared, contrib = self._shared(slice(int(self.row_ptr[a]), int(self.row_ptr[b])), slot, q_sigs, q_weights, table)
            row = np.repeat(np.arange(b - a, dtype=np.int32), counts[a:b])[shared]
            out[a:b] = np.bincount(row, weights=contrib, minlength=b - a)
            a = b
        return out

    def _slots(self, q_words: np.ndarray) -> np.ndarray:
        """(K,) int32: each query word's position in ``q_words``, -1 for the other words."""
        slot = np.full(self.vocabulary_size, -1, np.int32)
        slot[np.asarray(q_words, np.int64)] = np.arange(len(q_words), dtype=np.int32)
        return slot

    def _shared(self, entries: slice | np.ndarray, slot: np.ndarray, q_sigs: np.ndarray, q_weights: np.ndarray,
                table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The positions in ``entries`` (a contiguous slice, or indices) whose word the query holds,
        and each one's ``q_weights[w] · table[hamming]``."""
        j = slot[self.words[entries]]
        shared = np.flatnonzero(j >= 0)
        j = j[shared]
        index = shared + entries.start if isinstance(entries, slice) else entries[shared]
        h = hamming(np.take(q_sigs, j, axis=0), np.take(self.sigs, index, axis=0))
        return shared, table[h] * np.asarray(q_weights)[j]

    def score_rows(self, q_words: np.ndarray, q_sigs: np.ndarray, q_weights: np.ndarray, rows: np.ndarray,
                   table: np.ndarray) -> np.ndarray:
        """:meth:`score` of the given ``rows`` only: (len(rows),) float32, in their order.

        Reads those rows' entries and nothing else, :data:`CHUNK_ENTRIES` at a time.
        """
        rows = np.asarray(rows, np.int64).reshape(-1)
        out = np.zeros(len(rows), np.float32)
        if not len(rows) or not len(q_words):
            return out
        slot = self._slots(q_words)
        cum = np.cumsum(self.row_ptr[rows + 1] - self.row_ptr[rows])
        cuts = [0, *np.searchsorted(cum, np.arange(CHUNK_ENTRIES, int(cum[-1]), CHUNK_ENTRIES), "right").tolist(), len(rows)]
        for a, b in pairwise(cuts):
            if a == b:
                continue
            entries, which = self._entries(rows[a:b])
            shared, contrib = self._shared(entries, slot, q_sigs, q_weights, table)
            out[a:b] = np.bincount(which[shared], weights=contrib, minlength=b - a)
        return out
