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
    #: "flat" (exact) or an approximate kind ("ivfflat", "ivfsq8", "ivfpq").
    kind: str = "flat"
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
    def ids(self) -> np.ndarray:
        """Every id in the index (int64, in no particular order)."""

    @abc.abstractmethod
    def save(self, path: Path) -> None:
        """Persist atomically (a crash leaves the old file or the new one)."""


#: Index kinds a store can be asked for (``StoreConfig.index``).
INDEX_KINDS = ("auto", "flat", "ivfflat", "ivfsq8", "ivfpq")
#: Below this many vectors of 512 dimensions ``auto`` stays exact (a flat scan
#: is fast enough). A single-query flat scan reads every vector, so its cost
#: is the count times the dimension: :func:`ann_threshold` scales the count.
AUTO_ANN_THRESHOLD = 50_000
#: Floats a flat scan may read per query before ``auto`` turns approximate
#: (100 MB: ~15 ms on this project's 2 cores; a 50,000 x 2,560 flat scan took
#: 73 ms per search, docs/benchmarks.md).
AUTO_ANN_BUDGET = AUTO_ANN_THRESHOLD * 512
#: ``auto`` above the threshold: inverted lists over 8-bit scalar-quantised
#: vectors (recall@10 >= 0.95 at a few ms per query, 1 byte per dimension;
#: see docs/benchmarks/scale.md).
AUTO_ANN_KIND = "ivfsq8"


def ann_threshold(dim: int) -> int:
    """Vectors of ``dim`` dimensions from which ``auto`` uses :data:`AUTO_ANN_KIND`.

    50,000 at 512-d, 20,000 at 1,280-d, 10,000 at 2,560-d (never below 5,000:
    inverted lists need enough vectors to train on).
    """
    return max(5_000, AUTO_ANN_BUDGET // max(dim, 1))


def ann_params(kind: str, n: int, dim: int) -> dict[str, int]:
    """Default parameters of an approximate index over ``n`` vectors.

    ``nlist`` ~ sqrt(n) inverted lists (a power of two, 16 … 65536) and
    ``nprobe`` = nlist / 128 lists visited per query (at least 8): 1024 and 8
    for a million vectors. In the scale benchmark (docs/benchmarks/scale.md)
    recall@10 is already >= 0.977 at nprobe 4 for 256/512/1280-d, so 8 leaves
    headroom for catalogues whose clusters overlap more; ``m`` PQ
    sub-quantizers (``ivfpq``).
    """
    nlist = int(min(65536, max(16, 2 ** round(np.log2(np.sqrt(max(n, 1)))))))
    params = {"nlist": nlist, "nprobe": max(8, nlist // 128)}
    if kind == "ivfpq":
        # sub-vectors of at least 8 dimensions (finer ones cost training time for little recall)
        m = next((m for m in (64, 48, 32, 16, 8, 4, 2) if dim % m == 0 and dim // m >= 8), 1)
        params["m"] = m
    return params


def _factory(kind: str, dim: int, params: dict[str, int]) -> Any:
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatL2(dim))
    nlist = int(params["nlist"])
    encodings = {"ivfflat": "Flat", "ivfsq8": "SQ8", "ivfpq": f"PQ{params.get('m', 8)}x{params.get('nbits', 8)}"}
    if kind not in encodings:
        raise StoreError(f"unknown vector index kind {kind!r}; known: {', '.join(INDEX_KINDS)}")
    return faiss.index_factory(dim, f"IVF{nlist},{encodings[kind]}", faiss.METRIC_L2)


class FaissIndex(VectorIndex):
    """A FAISS index under int64 ids: exact (``flat``) or approximate (``ivf*``).

    Approximate kinds are inverted-file indexes: they are trained (k-means) on
    a sample of the stored vectors, and unlike FAISS's HNSW they remove ids in
    place, so deletes and updates are visible to the next search. A filtered
    search that the visited lists cannot fill is re-run over every list (still
    filtered inside FAISS), so a restrictive filter never loses matches.
    """

    def __init__(self, dim: int, index: Any | None = None, *, kind: str = "flat", params: dict[str, int] | None = None) -> None:
        self.dim = dim
        self.kind = kind
        self.params = dict(params or {})
        self.index = index if index is not None else _factory(kind, dim, self.params)
        if kind != "flat":
            self._ivf = faiss.extract_index_ivf(self.index)
            if self._ivf.direct_map.type == faiss.DirectMap.NoMap:  # type: ignore[attr-defined]
                self._ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
            self.nprobe = int(self.params.get("nprobe", 16))

    @classmethod
    def trained(cls, kind: str, sample: np.ndarray, params: dict[str, int] | None = None) -> FaissIndex:
        """An empty approximate index of ``kind`` trained on ``sample`` vectors."""
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        dim = sample.shape[1]
        p = {**ann_params(kind, len(sample), dim), **(params or {})}
        p["nlist"] = int(min(p["nlist"], max(1, len(sample) // 39)))  # k-means needs ~39 points per centroid
        if kind == "ivfpq" and len(sample) < 39 * 256:
            p["nbits"] = 4  # too few points for 256 codes per sub-quantizer
        out = cls(dim, kind=kind, params=p)
        out.index.train(sample)
        return out

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.exact and self.index.ntotal == 0 and vectors.ndim == 2 and vectors.shape[1] != self.dim:
            # An empty index takes the dimension of its first vectors.
            self.dim = vectors.shape[1]
            self.index = _factory("flat", self.dim, {})
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}")
        self.remove(ids)
        self.index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> None:
        if len(ids) == 0 or self.index.ntotal == 0:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.exact:
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
        else:  # the IVF direct map (a hash table) removes by array, without scanning the lists
            self.index.remove_ids(faiss.IDSelectorArray(ids))

    def search(self, vectors: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        n = vectors.shape[0]
        empty = np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        if k <= 0 or self.index.ntotal == 0 or (allowed is not None and len(allowed) == 0):
            return empty
        k = min(k, int(self.index.ntotal))
        sel = None if allowed is None else faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        if self.exact:
            params = None if sel is None else faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]
            d2, ids = self.index.search(vectors, k, params=params)
        else:
            d2, ids = self.index.search(vectors, k, params=faiss.SearchParametersIVF(sel=sel, nprobe=self.nprobe))  # type: ignore[call-arg]
            if sel is not None:
                want = min(k, len(allowed))  # type: ignore[arg-type]
                short = np.flatnonzero((ids >= 0).sum(1) < want)
                if len(short):  # the visited lists held too few allowed ids: visit them all
                    full = faiss.SearchParametersIVF(sel=sel, nprobe=self._ivf.nlist)  # type: ignore[call-arg]
                    d2[short], ids[short] = self.index.search(vectors[short], k, params=full)
        return np.sqrt(np.maximum(d2, 0.0)).astype(np.float32), ids

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (exact for ``flat``, decoded otherwise)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.exact:
            return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)
        return np.stack([self._ivf.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)

    def ids(self) -> np.ndarray:
        """Every id in the index."""
        if self.exact:
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        invlists: Any = self._ivf.invlists
        out = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
            for i in range(self._ivf.nlist)
            if invlists.list_size(i)
        ]
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)

    def save(self, path: Path) -> None:
        # Streamed: FAISS writes the index to the file in chunks while they are
        # hashed, so persisting holds no serialised copy of the index in memory
        # (persisting and opening are where a server's memory peaks).
        placeholder = "0" * 64
        header = json.dumps(
            {
                "sha256": placeholder,  # first: its offset is fixed, filled in once the payload is written
                "kind": self.kind,
                "params": {**self.params, **({"nprobe": self.nprobe} if not self.exact else {})},
                "dim": self.dim,
                "count": len(self),
                "applied_seq": self.applied_seq,
                "head_id": self.head_id,
            }
        ).encode()
        at = len(_MAGIC) + 4 + len('{"sha256": "')
        digest = hashlib.sha256()
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_MAGIC + len(header).to_bytes(4, "little") + header)

            def write(chunk: bytes) -> None:
                digest.update(chunk)
                f.write(chunk)

            faiss.write_index(self.index, faiss.PyCallbackIOWriter(write))  # type: ignore[attr-defined]
            f.seek(at)
            f.write(digest.hexdigest().encode())  # same length as the placeholder: the header stays valid JSON
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: Path) -> FaissIndex:
        """Load a saved index; any damage raises :class:`StoreError`."""
        try:
            with open(path, "rb") as f:
                if f.read(len(_MAGIC)) != _MAGIC:
                    raise ValueError("not a shoplens index file")
                n = int.from_bytes(f.read(4), "little")
                header = json.loads(f.read(n))
                start = f.tell()
                # Checked first, in chunks, then read by FAISS from the file: at
                # no time is a copy of the whole file held besides the index.
                digest = hashlib.sha256()
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
                if digest.hexdigest() != header["sha256"]:
                    raise ValueError("checksum mismatch")
                f.seek(start)
                index = faiss.read_index(faiss.PyCallbackIOReader(f.read))  # type: ignore[attr-defined]
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - any damage means "rebuild"
            raise StoreError(f"{path}: damaged vector index ({err})") from None
        kind = str(header.get("kind", "flat"))
        if kind not in INDEX_KINDS or kind == "auto":
            raise StoreError(f"{path}: damaged vector index (unknown kind {kind!r})")
        out = cls(int(header["dim"]), index, kind=kind, params=dict(header.get("params", {})))
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
