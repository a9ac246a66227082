"""A segment: an immutable block of indexed images, as in a log-structured index.

Each :meth:`LocalIndex.add <shoplens.local.index.LocalIndex.add>` makes a
segment holding, for its images, their visual words and signatures
(:class:`~shoplens.local.invfile.Postings`, scored at query time, kept in
memory) and the keypoints and SIFT descriptors that verification needs
(memory-mapped from disk once saved, so they cost disk, not memory). Only
the ``alive`` mask of a segment ever changes (removals); small segments
are merged, dropping removed images, so that queries scan a few segments. A saved segment is a directory of ``.npy`` files written
once and never modified.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import StoreError
from ._io import fsync_dir, write_npy
from .features import DESCRIPTOR_DIM, LocalFeatures
from .invfile import Postings

_ARRAYS = ("ids", "n_words", "row_ptr", "words", "sigs", "kp_ptr", "xy", "sift")
#: Segments written in the older layout hold their postings sorted by word in these instead of
#: ``row_ptr`` and ``words``: they are converted when read.
_BY_WORD_ARRAYS = ("ptr", "rows")
#: Arrays memory-mapped rather than read into memory when a segment is loaded.
_MAPPED = ("xy", "sift")


@dataclass(eq=False)  # compared by identity: segments hold arrays
class Segment:
    ids: np.ndarray  # (n,) int64 image ids
    n_words: np.ndarray  # (n,) int32 distinct words of each image
    postings: Postings
    kp_ptr: np.ndarray  # (n + 1,) int64 offsets into xy / sift
    xy: np.ndarray  # (P, 2) float32
    sift: np.ndarray  # (P, 128) uint8
    alive: np.ndarray  # (n,) bool
    #: Directory name once written (``seg-…``), ``None`` while only in memory.
    name: str | None = None
    #: File (in the segment's directory) holding the alive mask last written, if any.
    alive_file: str | None = None
    #: The alive mask changed since it was last written.
    alive_dirty: bool = field(default=True)
    #: Read from the older layout by word: the next save writes it anew, in this layout.
    converted: bool = field(default=False)
    #: The directory a segment was read from.
    origin: Path | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_alive(self) -> int:
        return int(self.alive.sum())

    @classmethod
    def build(cls, ids: np.ndarray, encoded: Sequence[tuple[np.ndarray, np.ndarray]],
              features: Sequence[LocalFeatures], vocabulary_size: int) -> Segment:
        """``encoded``: per image, its distinct words and ASMK signatures; ``features``: its keypoints."""
        counts = np.array([len(f) for f in features], np.int64)
        kp_ptr = np.zeros(len(features) + 1, np.int64)
        np.cumsum(counts, out=kp_ptr[1:])
        xy = np.concatenate([f.xy for f in features]) if features else np.zeros((0, 2), np.float32)
        sift = np.concatenate([f.sift for f in features]) if features else np.zeros((0, DESCRIPTOR_DIM), np.uint8)
        return cls(
            ids=np.asarray(ids, np.int64).copy(),
            n_words=np.array([len(w) for w, _ in encoded], np.int32),
            postings=Postings.build(encoded, vocabulary_size),
            kp_ptr=kp_ptr,
            xy=np.ascontiguousarray(xy, np.float32),
            sift=np.ascontiguousarray(sift, np.uint8),
            alive=np.ones(len(ids), bool),
        )

    def features(self, row: int) -> LocalFeatures:
        a, b = int(self.kp_ptr[row]), int(self.kp_ptr[row + 1])
        return LocalFeatures(np.asarray(self.xy[a:b]), np.asarray(self.sift[a:b]))

    def alive_word_counts(self) -> np.ndarray:
        """How many alive images hold each word: (K,) int64."""
        return self.postings.word_counts(self.alive)

    def words_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """All words held by the given rows, concatenated."""
        return self.postings.words_of_rows(rows)

    @property
    def nbytes_memory(self) -> int:
        """Bytes kept in memory (postings and per-image arrays)."""
        return int(self.postings.nbytes + self.ids.nbytes + self.n_words.nbytes + self.kp_ptr.nbytes + self.alive.nbytes)

    @property
    def nbytes_features(self) -> int:
        """Bytes of keypoints and descriptors for verification (on disk, memory-mapped, once saved)."""
        return int(self.xy.nbytes + self.sift.nbytes)

    # -- merging -------------------------------------------------------------------------------

    @classmethod
    def merge(cls, segments: Sequence[Segment]) -> Segment:
        """One segment holding the alive images of ``segments``, in order."""
        vocabulary_size = segments[0].postings.vocabulary_size
        ids, encoded, features = [], [], []
        for seg in segments:
            per_row = seg.postings.image_words()
            for row in np.flatnonzero(seg.alive):
                ids.append(int(seg.ids[row]))
                encoded.append(per_row[row])
                features.append(seg.features(int(row)))
        return cls.build(np.array(ids, np.int64), encoded, features, vocabulary_size)

    # -- persistence ---------------------------------------------------------------------------

    def write(self, directory: Path, name: str) -> None:
        """Write the immutable arrays to ``directory/name`` (through a temporary directory).

        A converted segment's keypoints and descriptors are hard links to the
        files it was read from (copied where links are impossible): rewriting
        an index in the new layout does not copy its largest files.
        """
        tmp = directory / f".tmp-{name}"
        tmp.mkdir(parents=True, exist_ok=False)
        arrays = {
            "ids": self.ids, "n_words": self.n_words, "row_ptr": self.postings.row_ptr, "words": self.postings.words,
            "sigs": self.postings.sigs, "kp_ptr": self.kp_ptr, "xy": self.xy, "sift": self.sift,
        }
        source = self.origin if self.converted else None
        for key, value in arrays.items():
            if source is not None and key in _MAPPED:
                try:
                    os.link(source / f"{key}.npy", tmp / f"{key}.npy")
                    continue
                except OSError:
                    pass
            write_npy(tmp / f"{key}.npy", np.asarray(value))
        fsync_dir(tmp)
        os.rename(tmp, directory / name)
        self.name = name
        self.alive_file = None
        self.converted = False

    def write_alive(self, directory: Path, filename: str) -> None:
        assert self.name is not None
        write_npy(directory / self.name / filename, self.alive)
        self.alive_file = filename
        self.alive_dirty = False

    @classmethod
    def read(cls, directory: Path, name: str, alive_file: str, vocabulary_size: int) -> Segment:
        path = directory / name
        by_word = not (path / "row_ptr.npy").exists()
        keys = ([k for k in _ARRAYS if k not in ("row_ptr", "words")] + list(_BY_WORD_ARRAYS)) if by_word else list(_ARRAYS)
        try:
            a = {k: np.load(path / f"{k}.npy", mmap_mode="r" if k in _MAPPED else None, allow_pickle=False)
                 for k in keys}
            alive = np.array(np.load(path / alive_file, allow_pickle=False), bool)
        except (OSError, ValueError) as err:
            raise StoreError(f"{path}: cannot read a local-feature segment ({err})") from None
        n = len(a["ids"])
        postings = _postings(a, n, vocabulary_size, by_word)
        if (postings is None or len(alive) != n or len(a["kp_ptr"]) != n + 1 or int(a["kp_ptr"][-1]) != len(a["xy"])
                or len(a["xy"]) != len(a["sift"])):
            raise StoreError(f"{path}: local-feature segment is inconsistent (truncated or from another vocabulary)")
        return cls(
            ids=a["ids"], n_words=a["n_words"], postings=postings,
            kp_ptr=a["kp_ptr"], xy=a["xy"], sift=a["sift"], alive=alive, name=name, alive_file=alive_file,
            alive_dirty=False, converted=by_word, origin=path,
        )


def _postings(a: dict[str, np.ndarray], n: int, vocabulary_size: int, by_word: bool) -> Postings | None:
    """A read segment's postings (converted from the layout by word), or None when its arrays do not fit together."""
    sigs = a["sigs"]
    if by_word:
        ptr, rows = a["ptr"], a["rows"]
        if (len(ptr) != vocabulary_size + 1 or int(ptr[-1]) != len(rows) or len(rows) != len(sigs)
                or (len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < n)):
            return None
        return Postings.from_inverted(ptr, rows, sigs, n)
    row_ptr, words = a["row_ptr"], a["words"]
    if (len(row_ptr) != n + 1 or int(row_ptr[-1]) != len(words) or len(words) != len(sigs)
            or (len(words) and int(words.max()) >= vocabulary_size)):
        return None
    return Postings(row_ptr, words, sigs, vocabulary_size)
