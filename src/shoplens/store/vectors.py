"""Vector indexes: one per domain partition, derived from the metadata store.

A :class:`VectorIndex` holds L2-normalised vectors under int64 ids (the image
ids of the metadata store) and answers k-nearest-neighbour queries with the
Euclidean distance (0 … 2), optionally restricted to a set of allowed ids
(metadata filters applied inside the search). It records the last change-log
sequence it has applied, so a store can replay what it missed.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import StoreError

log = logging.getLogger(__name__)

_MAGIC = b"SHOPLENS-VIDX1\n"


class VectorIndex(abc.ABC):
    """k-NN over L2-normalised vectors with int64 ids."""

    dim: int
    #: The last change-log sequence number reflected in this index.
    applied_seq: int = 0
    #: Identifies the head the vectors were projected with.
    head_id: str = ""

    @abc.abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors; an id already present is replaced."""

    @abc.abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Remove ids (absent ids are ignored)."""

    @abc.abstractmethod
    def search(self, vectors: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), each (n, k); missing neighbours have id −1.

        ``allowed``: only these ids may be returned (a filter applied inside
        the search, not after it).
        """

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def save(self, path: Path) -> None:
        """Persist atomically (a crash leaves the old file or the new one)."""


class FaissIndex(VectorIndex):
    """Exact FAISS index (flat L2) behind an id map."""

    kind = "flat"

    def __init__(self, dim: int, index: Any | None = None) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatL2(dim))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.index.ntotal == 0 and vectors.ndim == 2 and vectors.shape[1] != self.dim:
            # An empty index takes the dimension of its first vectors.
            self.dim = vectors.shape[1]
            self.index = faiss.IndexIDMap2(faiss.IndexFlatL2(self.dim))
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}")
        self.remove(ids)
        self.index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> None:
        if len(ids) == 0 or self.index.ntotal == 0:
            return
        self.index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))

    def search(self, vectors: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        n = vectors.shape[0]
        if k <= 0 or self.index.ntotal == 0:
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        k = min(k, int(self.index.ntotal))
        if allowed is not None:
            if len(allowed) == 0:
                return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64)))
            d2, ids = self.index.search(vectors, k, params=params)
        else:
            d2, ids = self.index.search(vectors, k)
        return np.sqrt(np.maximum(d2, 0.0)).astype(np.float32), ids

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def save(self, path: Path) -> None:
        payload = faiss.serialize_index(self.index).tobytes()
        header = json.dumps(
            {
                "kind": self.kind,
                "dim": self.dim,
                "count": len(self),
                "applied_seq": self.applied_seq,
                "head_id": self.head_id,
                "sha256": hashlib.sha256(payload).hexdigest(),
            }
        ).encode()
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_MAGIC + len(header).to_bytes(4, "little") + header + payload)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: Path) -> "FaissIndex":
        """Load a saved index; any damage raises :class:`StoreError`."""
        try:
            data = path.read_bytes()
            if not data.startswith(_MAGIC):
                raise ValueError("not a shoplens index file")
            n = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 4], "little")
            start = len(_MAGIC) + 4
            header = json.loads(data[start : start + n])
            payload = data[start + n :]
            if hashlib.sha256(payload).hexdigest() != header["sha256"]:
                raise ValueError("checksum mismatch")
            index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - any damage means "rebuild"
            raise StoreError(f"{path}: damaged vector index ({err})") from None
        out = cls(int(header["dim"]), index)
        out.applied_seq = int(header["applied_seq"])
        out.head_id = str(header.get("head_id", ""))
        if len(out) != int(header["count"]):
            raise StoreError(f"{path}: damaged vector index (count mismatch)")
        return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
