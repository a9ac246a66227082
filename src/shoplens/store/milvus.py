"""The distributed engine: a catalogue store in Milvus (``pip install 'shoplens[milvus]'``).

Everything lives in Milvus, so the application needs no local database and
any number of search processes can share one catalogue. A store named
``NAME`` is a set of collections:

```
NAME_products        product_id (key), title, category and their sources, metadata (JSON),
                     images: the committed image ids of the product (JSON list)
NAME_images          image_id (key, allocated by Milvus), product_id, source, sha1, domain,
                     signature, raw (the raw descriptor: float16, base64), batch (journal row that added it)
NAME_vec_<domain>    image_id (key), vector: the projected vector, searched (one per domain partition)
NAME_journal         one row per write in progress (see below)
NAME_files           models trained for the catalogue, the saved configuration and the local-feature
                     index (its segments, then its manifest), in chunks: a client copies them into its
                     cache folder at open; the writer uploads what changed at persist
```

(Milvus requires a vector field in every collection: the metadata
collections carry a 2-d placeholder vector nobody searches.)

**Atomic, durable writes.** Milvus has no multi-row transactions, so
:meth:`MilvusStore.write` follows a redo-log protocol. (1) A ``pending``
journal row goes in, then the new images' rows (raw descriptors, no
vectors), tagged with it: nothing searchable yet. (2) The journal row is
upserted as ``committed`` with the whole change (product rows with their new
image lists, ids to delete): this is the commit point; Milvus acknowledges
an upsert once it is in its write-ahead log. (3) The change is applied:
product rows upserted, vectors of the new images upserted, removed images
and deleted products deleted. (4) The journal row is deleted. Opening the
store finishes what a crash interrupted: a ``committed``
batch is applied again (every step is idempotent), a ``pending`` one is
rolled back (its tagged image rows deleted). A search only ever sees vectors,
written after the commit point, so an unacknowledged image is never found.

**Visibility.** Collections use Strong consistency: when ``write`` returns,
every client sees the change. If a writer dies between its commit point and
the end of step (3), other clients may see part of that committed batch until
the store is next opened for writing, which completes it.

One writer process at a time (as for the embedded store); any number of
readers.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DOMAINS
from ..errors import MissingDependencyError, StoreBusyError, StoreError
from ..filters import Filter, matches
from .artifacts import LOCAL_INDEX_DIR, LOCAL_MANIFEST, MODELS_DIR, Artifact, sha256_bytes, write_atomic
from .base import CatalogueStore, Projector, WriteBatch
from .metadata import ImageRecord, ImageVersion, ProductRecord, StoredImage, decode_raw, encode_raw

log = logging.getLogger(__name__)

#: StoreConfig.index -> Milvus index type (Milvus Lite searches FLAT whatever it is told).
MILVUS_INDEXES = {
    "auto": ("AUTOINDEX", {}),
    "flat": ("FLAT", {}),
    "ivfflat": ("IVF_FLAT", {"nlist": 1024}),
    "ivfsq8": ("IVF_SQ8", {"nlist": 1024}),
    "ivfpq": ("IVF_PQ", {"nlist": 1024, "m": 16}),
    "hnsw": ("HNSW", {"M": 16, "efConstruction": 200}),
}
_SEARCH_PARAMS = {"IVF_FLAT": {"nprobe": 32}, "IVF_SQ8": {"nprobe": 32}, "IVF_PQ": {"nprobe": 32}, "HNSW": {"ef": 128}}
_VARCHAR = 65535
_CHUNK = 60000
_BATCH = 1000
#: How long opening a Milvus Lite file waits for another process to let go of it. A killed
#: writer's Milvus Lite 2.x server (a child process) notices its parent is gone and holds
#: the file for some 20 s more while it shuts down.
LITE_WAIT_S = 60.0


class _LiteNoise(logging.Filter):
    """Milvus Lite's in-process server logs every unimplemented call (the query iterator probes one) as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Method not implemented" not in record.getMessage()


def _client(uri: str, token: str | None) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise MissingDependencyError("pymilvus", "milvus", "The Milvus store") from None
    try:
        return MilvusClient(uri=uri, token=token or "")
    except Exception as err:  # noqa: BLE001 - any connection failure
        raise StoreError(f"cannot reach Milvus at {uri}: {err}") from None


def _datatype() -> Any:
    from pymilvus import DataType

    return DataType


def _b64(raw: np.ndarray) -> str:
    return base64.b64encode(encode_raw(raw)).decode("ascii")


def _unb64(text: str) -> np.ndarray:
    return decode_raw(base64.b64decode(text))


def _safe_name(name: str) -> bool:
    """Whether a stored file's name stays inside the cache folder (relative, no ``..``)."""
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _in(field: str, values: Sequence[Any]) -> str:
    return f"{field} in [{', '.join(_quote(v) if isinstance(v, str) else str(int(v)) for v in values)}]"


def _lite_holder(path: Path) -> tuple[Path, int | None] | None:
    """(lock file, holder's PID when known) of the Milvus Lite file at ``path``, while another process holds it.

    Milvus Lite 2.x locks ``.NAME.db.lock`` beside the file (``lockf``, held
    by its server process); 3.x locks ``NAME.db/LOCK`` (``flock``, held by
    the process that serves it). Each lock is tried and let go at once.
    """
    for lock, posix in ((path.parent / f".{path.name}.lock", True), (path / "LOCK", False)):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue  # no such lock file: not held that way
        try:
            if posix:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.lockf(fd, fcntl.LOCK_UN)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            return lock, _lock_pid(lock)
        finally:
            os.close(fd)
    return None


def _lock_pid(lock: Path) -> int | None:
    """The process holding a lock on ``lock``, from /proc/locks (Linux); None elsewhere or when gone."""
    try:
        inode = os.stat(lock).st_ino
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6 and fields[1] != "->" and fields[5].rsplit(":", 1)[-1] == str(inode):
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


def _wait_for_lite(path: str, timeout: float) -> None:
    """Return once no other process holds the Milvus Lite file at ``path``, saying so while waiting.

    A store this process already serves is not probed: its own lock would
    look held (and a POSIX lock would be dropped by the probe's close).
    """
    if path in MilvusStore._lite_users:
        return
    deadline = time.monotonic() + timeout
    waited = False
    while (held := _lite_holder(Path(path))) is not None:
        lock, pid = held
        who = f"PID {pid}" if pid is not None else "another process"
        if time.monotonic() >= deadline:
            raise StoreBusyError(
                f"milvus-lite:{path}: the Milvus Lite file is still held by {who} ({lock}) after {timeout:.0f} s: "
                "stop that process (a second writer, or the Milvus Lite server a killed one left behind) and run again", pid)
        if not waited:
            log.warning("milvus-lite:%s: the Milvus Lite file is held by %s (%s), e.g. the Milvus Lite server of a writer "
                        "that was killed, which outlives it for a while: waiting up to %.0f s for it to let go", path, who, lock, timeout)
            waited = True
        time.sleep(0.2)
    if waited:
        log.warning("milvus-lite:%s: let go; opening it", path)


class MilvusStore(CatalogueStore):
    """A catalogue store in Milvus: a cluster (``http://host:19530``) or Milvus Lite (a local file).

    ``name``: prefix of the collections. ``cache_dir``: local folder holding a
    copy of the models and configuration stored in Milvus (the models
    pipeline code loads from files); defaults to ``<lite file>.shoplens`` for
    Milvus Lite, else ``~/.cache/shoplens/milvus/<host>_<name>``.
    ``lite_wait_s``: how long opening a Milvus Lite file another process
    holds waits for it (with a warning in the log) before
    :class:`~shoplens.errors.StoreBusyError`.
    """

    engine = "milvus"
    #: Milvus Lite files opened by this process -> open stores (its in-process server is released with the last).
    _lite_users: dict[str, int] = {}

    def __init__(
        self,
        uri: str,
        name: str,
        projector: Projector | None,
        *,
        create: bool = True,
        index: str = "auto",
        token: str | None = None,
        cache_dir: str | Path | None = None,
        lite_wait_s: float = LITE_WAIT_S,
        read_only: bool = False,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", name):
            raise StoreError(f"Milvus collection name {name!r}: use letters, digits and underscores")
        if index not in MILVUS_INDEXES:
            raise StoreError(f"unknown vector index kind {index!r} for Milvus; known: {', '.join(MILVUS_INDEXES)}")
        self.uri, self.name, self.index_kind = uri, name, index
        #: A reader: it downloads the store's files, never uploads its copy (which may be older than the writer's).
        self.read_only = read_only
        self.projector = projector  # type: ignore[assignment]
        lite = not uri.startswith(("http://", "https://", "tcp://", "grpc://"))
        if lite:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            logging.getLogger("grpc._server").addFilter(_LiteNoise())
            _wait_for_lite(str(Path(uri).absolute()), lite_wait_s)
        self.client = _client(uri, token)
        self._lite_path = str(Path(uri).absolute()) if lite else None
        if self._lite_path:
            MilvusStore._lite_users[self._lite_path] = MilvusStore._lite_users.get(self._lite_path, 0) + 1
        self.location = f"milvus-lite:{uri}#{name}" if lite else f"milvus://{uri.split('://', 1)[1]}/{name}"
        if cache_dir is None:
            if lite:
                cache_dir = Path(uri + ".shoplens") / name
            else:
                host = re.sub(r"[^A-Za-z0-9]+", "_", uri.split("://", 1)[1])
                cache_dir = Path(os.environ.get("SHOPLENS_HOME", Path.home() / ".cache" / "shoplens")) / "milvus" / f"{host}_{name}"
        self.root = Path(cache_dir)
        exists = self.client.has_collection(self._products)
        if not exists and not create:
            raise StoreError(f"{self.location}: no such store (run 'shoplens index ... --store {self.location}' first)")
        if not exists:
            self._create_metadata_collections()
        else:  # after a restart of Milvus (or of Milvus Lite, in process) collections come back released
            for coll in [self._products, self._images, self._journal, self._files] + [self._vec(d) for d in DOMAINS]:
                if self.client.has_collection(coll):
                    self.client.load_collection(coll)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._dims: dict[str, int] = {}
        self._download_files()
        if self.projector is not None:
            self._recover()  # else on attach: completing a committed write projects its descriptors

    def attach(self, projector: Projector, *, index: str | None = None) -> None:
        first = self.projector is None  # recovery waited for a projector; it runs once
        super().attach(projector, index=index)
        if first:
            self._recover()

    # -- collections ----------------------------------------------------------
    @property
    def models_dir(self) -> Path:  # type: ignore[override]
        return self.root / MODELS_DIR

    @property
    def _products(self) -> str:
        return f"{self.name}_products"

    @property
    def _images(self) -> str:
        return f"{self.name}_images"

    @property
    def _journal(self) -> str:
        return f"{self.name}_journal"

    @property
    def _files(self) -> str:
        return f"{self.name}_files"

    def _vec(self, domain: str) -> str:
        return f"{self.name}_vec_{domain}"

    def _create(self, name: str, fields: list[tuple[str, Any, dict[str, Any]]], *, auto_id: bool = False, dim: int = 2, index: str = "FLAT", params: dict[str, Any] | None = None) -> None:
        DataType = _datatype()
        schema = self.client.create_schema(auto_id=auto_id, enable_dynamic_field=False)
        for fname, ftype, kw in fields:
            schema.add_field(fname, ftype, **kw)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        ip = self.client.prepare_index_params()
        ip.add_index("vector", index_type=index, metric_type="L2", params=params or {})
        self.client.create_collection(name, schema=schema, index_params=ip, consistency_level="Strong")

    def _create_metadata_collections(self) -> None:
        T = _datatype()
        text = {"max_length": _VARCHAR, "nullable": True}
        self._create(self._products, [
            ("product_id", T.VARCHAR, {"max_length": 1024, "is_primary": True}),
            ("title", T.VARCHAR, text),
            ("category", T.VARCHAR, text),
            ("category_source", T.VARCHAR, {"max_length": 32}),
            ("domain", T.VARCHAR, {"max_length": 32}),
            ("domain_source", T.VARCHAR, {"max_length": 32}),
            ("metadata", T.JSON, {}),
            ("images", T.JSON, {}),
        ])
        self._create(self._images, [
            ("image_id", T.INT64, {"is_primary": True}),
            ("product_id", T.VARCHAR, {"max_length": 1024}),
            ("source", T.VARCHAR, {"max_length": 4096}),
            ("sha1", T.VARCHAR, {"max_length": 64}),
            ("domain", T.VARCHAR, {"max_length": 32}),
            ("signature", T.VARCHAR, {"max_length": 1024}),
            ("raw", T.VARCHAR, {"max_length": _VARCHAR}),
            ("batch", T.INT64, {}),  # the journal row of the write that added it
        ], auto_id=True)
        self._create(self._journal, [
            ("seq", T.INT64, {"is_primary": True}),
            ("state", T.VARCHAR, {"max_length": 16}),
            ("payload", T.JSON, {}),
        ], auto_id=True)
        self._create(self._files, [
            ("key", T.VARCHAR, {"max_length": 1024, "is_primary": True}),
            ("name", T.VARCHAR, {"max_length": 1024}),
            ("sha256", T.VARCHAR, {"max_length": 64}),
            ("part", T.INT64, {}),
            ("parts", T.INT64, {}),
            ("data", T.VARCHAR, {"max_length": _VARCHAR}),
        ])

    def _vector_collection(self, domain: str, dim: int | None = None) -> str | None:
        """The domain's vector collection, created with ``dim`` when absent (None: absent)."""
        name = self._vec(domain)
        if domain in self._dims:
            if dim is not None and dim != self._dims[domain]:
                raise StoreError(f"{self.location}: {domain} vectors are {self._dims[domain]}-d, got {dim}-d (reproject first)")
            return name
        if self.client.has_collection(name):
            desc = self.client.describe_collection(name)
            field = next(f for f in desc["fields"] if f["name"] == "vector")
            self._dims[domain] = int(field["params"]["dim"])
            return self._vector_collection(domain, dim)
        if dim is None:
            return None
        T = _datatype()
        index, params = MILVUS_INDEXES[self.index_kind]
        self._create(name, [("image_id", T.INT64, {"is_primary": True}), ("head", T.VARCHAR, {"max_length": 256})], dim=dim, index=index, params=params)
        self._dims[domain] = dim
        return name

    # -- helpers ------------------------------------------------------------
    def _query(self, collection: str, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        """Every row matching ``expr`` (paged)."""
        it = self.client.query_iterator(collection, batch_size=_BATCH, filter=expr, output_fields=fields)
        out: list[dict[str, Any]] = []
        try:
            while True:
                page = it.next()
                if not page:
                    return out
                out.extend(page)
        finally:
            it.close()

    def _count(self, collection: str, expr: str = "") -> int:
        rows = self.client.query(collection, filter=expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def _upsert(self, collection: str, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), _BATCH):
            self.client.upsert(collection, rows[start : start + _BATCH])

    def _delete_ids(self, collection: str, ids: Sequence[Any]) -> None:
        for start in range(0, len(ids), _BATCH):
            chunk = list(ids[start : start + _BATCH])
            if chunk:
                self.client.delete(collection, ids=chunk)

    @staticmethod
    def _product_row(p: ProductRecord, images: list[int]) -> dict[str, Any]:
        return {
            "product_id": p.product_id, "title": p.title, "category": p.category,
            "category_source": p.category_source, "domain": p.domain, "domain_source": p.domain_source,
            "metadata": p.metadata, "images": sorted(images), "vector": [0.0, 0.0],
        }

    @staticmethod
    def _record(row: dict[str, Any]) -> ProductRecord:
        return ProductRecord(row["product_id"], row.get("title"), row.get("category"), row["category_source"],
                             row["domain"], row["domain_source"], dict(row.get("metadata") or {}))

    _PRODUCT_FIELDS = ["product_id", "title", "category", "category_source", "domain", "domain_source", "metadata", "images"]

    def _product_rows(self, product_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        ids = list(dict.fromkeys(product_ids))
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]
            for row in self.client.get(self._products, ids=chunk, output_fields=self._PRODUCT_FIELDS):
                out[row["product_id"]] = row
        return out

    # -- writes -------------------------------------------------------------
    def write(self, batch: WriteBatch) -> list[int]:
        if not batch:
            return []
        if self.projector is None:
            raise StoreError("this store has no projector: it cannot index vectors")
        # (1) a pending journal row, then the new images' rows tagged with it: not part of any product yet
        pending = self.client.insert(self._journal, [{"state": "pending", "payload": {}, "vector": [0.0, 0.0]}])
        seq = int(pending["ids"][0])
        try:
            rows = [
                {"product_id": im.product_id, "source": im.source, "sha1": im.sha1, "domain": im.domain,
                 "signature": im.signature, "raw": _b64(im.raw), "batch": seq, "vector": [0.0, 0.0]}
                for im in batch.add_images
            ]
            new_ids: list[int] = []
            for start in range(0, len(rows), _BATCH):
                new_ids.extend(int(i) for i in self.client.insert(self._images, rows[start : start + _BATCH])["ids"])
            payload = self._plan(batch, new_ids)
        except BaseException:
            self._rollback(seq)
            raise
        # (2) the commit point
        self.client.upsert(self._journal, [{"seq": seq, "state": "committed", "payload": payload, "vector": [0.0, 0.0]}])
        # (3) apply, (4) forget
        self._apply(payload)
        self.client.delete(self._journal, ids=[seq])
        return new_ids

    def _plan(self, batch: WriteBatch, new_ids: list[int]) -> dict[str, Any]:
        """The whole change as data: product rows (with their image lists) and ids to delete."""
        deleted = set(batch.delete_products)
        drop: list[tuple[int, str]] = [(int(i), d) for i, d in batch.remove_images]
        owners = self.image_products([i for i, _ in drop])
        touched = {p.product_id for p in batch.products} | {im.product_id for im in batch.add_images} | set(owners.values())
        stored = self._product_rows(sorted(touched | deleted))
        records = {pid: self._record(row) for pid, row in stored.items()}
        records.update({p.product_id: p for p in batch.products})
        removed = {i for i, _ in drop}
        images = {pid: {int(i) for i in (row.get("images") or [])} - removed for pid, row in stored.items()}
        for i, im in zip(new_ids, batch.add_images):
            if im.product_id not in records or im.product_id in deleted:
                raise StoreError(f"image {im.source!r} names product {im.product_id!r}, which is not in the store")
            images.setdefault(im.product_id, set()).add(i)
        gone = sorted(deleted & set(stored))
        if gone:
            drop += [(int(r["image_id"]), r["domain"]) for r in self._query(self._images, _in("product_id", gone), ["image_id", "domain"])]
        upserts = [self._product_row(records[pid], sorted(images.get(pid, set()))) for pid in sorted(touched - deleted) if pid in records]
        for row in upserts:
            row.pop("vector")
        return {"new": new_ids, "upserts": upserts, "delete_products": gone, "drop": drop}

    def _apply(self, payload: dict[str, Any]) -> None:
        """Apply a committed change (idempotent: a crash may make it run twice)."""
        assert self.projector is not None
        if payload["upserts"]:
            self._upsert(self._products, [{**row, "vector": [0.0, 0.0]} for row in payload["upserts"]])
        new = [int(i) for i in payload["new"]]
        for start in range(0, len(new), _BATCH):
            rows = self.client.get(self._images, ids=new[start : start + _BATCH], output_fields=["image_id", "domain", "raw"])
            for domain in DOMAINS:
                picked = [r for r in rows if r["domain"] == domain]
                if not picked:
                    continue
                vectors = self.projector.project(domain, np.stack([_unb64(r["raw"]) for r in picked]))
                name = self._vector_collection(domain, vectors.shape[1])
                head = self.projector.version(domain)
                self._upsert(name, [{"image_id": int(r["image_id"]), "head": head, "vector": v.tolist()} for r, v in zip(picked, vectors)])  # type: ignore[arg-type]
        drop = [(int(i), d) for i, d in payload["drop"]]
        for domain in DOMAINS:
            ids = [i for i, d in drop if d == domain]
            name = self._vector_collection(domain)
            if ids and name is not None:
                self._delete_ids(name, ids)
        self._delete_ids(self._images, [i for i, _ in drop])
        self._delete_ids(self._products, payload["delete_products"])

    def _rollback(self, seq: int) -> None:
        """Forget an uncommitted write: its image rows (found by their tag), then its journal row."""
        self.client.delete(self._images, filter=f"batch == {int(seq)}")
        self.client.delete(self._journal, ids=[seq])

    def _recover(self) -> None:
        """Finish committed writes a crash interrupted; roll back uncommitted ones."""
        rows = self._query(self._journal, "seq >= 0", ["seq", "state", "payload"])
        for row in sorted(rows, key=lambda r: r["seq"]):
            if row["state"] == "committed":
                log.warning("%s: completing write %d interrupted after its commit point", self.location, row["seq"])
                self._apply(row["payload"])
                self.client.delete(self._journal, ids=[row["seq"]])
            else:
                log.warning("%s: rolling back write %d interrupted before its commit point", self.location, row["seq"])
                self._rollback(int(row["seq"]))

    def reproject(self, domain: str) -> None:
        """Re-project every stored raw descriptor into a new vector collection."""
        assert self.projector is not None
        name = self._vec(domain)
        if self.client.has_collection(name):
            self.client.drop_collection(name)
        self._dims.pop(domain, None)
        head = self.projector.version(domain)
        for ids, raw in self.iter_raw(domain):
            vectors = self.projector.project(domain, raw)
            coll = self._vector_collection(domain, vectors.shape[1])
            self._upsert(coll, [{"image_id": int(i), "head": head, "vector": v.tolist()} for i, v in zip(ids, vectors)])  # type: ignore[arg-type]
        self.persist()

    def persist(self) -> None:
        """Upload the models, the configuration and the local-feature index changed in the local cache folder."""
        if not self.read_only:
            self._upload_files()

    def close(self) -> None:
        if self.client is None:
            return
        try:
            self.persist()
        finally:
            self.client.close()
            self.client = None
            if self._lite_path:
                self._release_lite(self._lite_path)

    @classmethod
    def _release_lite(cls, path: str) -> None:
        """Stop this process's Milvus Lite server for ``path`` once no store uses it.

        Milvus Lite serves a file from one process at a time: holding it
        after close would block (or corrupt) the next process that opens it.
        """
        cls._lite_users[path] -= 1
        if cls._lite_users[path] > 0:
            return
        del cls._lite_users[path]
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:  # an older Milvus Lite: nothing to release
            return
        server_manager_instance.release_server(path)

    # -- files (trained models, saved configuration, the local-feature index) ----
    def _stored_files(self) -> dict[str, str]:
        return {r["name"]: r["sha256"] for r in self._query(self._files, "part == 0", ["name", "sha256"])}

    def _local_files(self) -> list[Artifact]:
        """What the store keeps of the cache folder: the models and configuration, then the local-feature
        index with its manifest last (its clients share no folder: each would extract every photo's SIFT)."""
        return self.artifacts.all() + self.artifacts.local_index_files()

    def _upload_files(self) -> None:
        stored = self._stored_files()
        local = self._local_files()
        for artifact in local:
            if stored.get(artifact.name) == artifact.sha256:
                continue
            name, data = artifact.name, artifact.path.read_bytes()
            sha = sha256_bytes(data)  # of the bytes sent, should the file have changed since it was listed
            text = base64.b64encode(data).decode("ascii")
            parts = [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [""]
            # Part 0 carries the checksum and is written last: a reader never takes a half-written file.
            rows = [{"key": f"{name}#{i}", "name": name, "sha256": sha if i == 0 else "", "part": i, "parts": len(parts), "data": p, "vector": [0.0, 0.0]} for i, p in enumerate(parts)]
            self._upsert(self._files, rows[1:])
            self._upsert(self._files, rows[:1])
            log.info("%s: stored %s (%d bytes)", self.location, name, len(data))
        # Index files the manifest no longer names (merged segments, old masks): after the manifest went in.
        names = {a.name for a in local}
        gone = [n for n in stored if n.startswith(LOCAL_INDEX_DIR + "/") and n not in names]
        for name in gone:
            keys = [r["key"] for r in self._query(self._files, f"name == {_quote(name)}", ["key"])]
            self._delete_ids(self._files, keys)

    def _download_files(self) -> None:
        local = {a.name: a.sha256 for a in self._local_files()}
        manifest = f"{LOCAL_INDEX_DIR}/{LOCAL_MANIFEST}"
        stored = sorted(self._stored_files().items(), key=lambda item: item[0] == manifest)  # the manifest last
        for name, sha in stored:
            if local.get(name) == sha:
                continue
            if not _safe_name(name):
                log.warning("%s: stored file name %r leaves the cache folder: skipped", self.location, name)
                continue
            rows = self._query(self._files, f"name == {_quote(name)}", ["part", "parts", "data"])
            rows.sort(key=lambda r: r["part"])
            data = base64.b64decode("".join(r["data"] for r in rows))
            if not rows or len(rows) != rows[0]["parts"] or sha256_bytes(data) != sha:
                log.warning("%s: stored file %s is incomplete: skipped", self.location, name)
                continue
            write_atomic(self.artifacts.path(name), data)

    # -- vector search ------------------------------------------------------
    def search(self, domain: str, vectors: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.asarray(vectors, dtype=np.float32)
        n = len(vectors)
        empty = np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        name = self._vector_collection(domain)
        if name is None or k <= 0 or (allowed is not None and len(allowed) == 0):
            return empty
        k = min(k, 16384)
        index, _ = MILVUS_INDEXES[self.index_kind]
        params = {"metric_type": "L2", "params": _SEARCH_PARAMS.get(index, {})}
        expr = _in("image_id", [int(i) for i in allowed]) if allowed is not None else ""
        hits = self.client.search(name, data=vectors.tolist(), limit=k, filter=expr, search_params=params, output_fields=["image_id"], anns_field="vector")
        width = max((len(h) for h in hits), default=0)
        if width == 0:
            return empty
        dist = np.full((n, width), np.inf, dtype=np.float32)
        ids = np.full((n, width), -1, dtype=np.int64)
        for r, row in enumerate(hits):
            for c, hit in enumerate(row):
                dist[r, c] = np.sqrt(max(float(hit["distance"]), 0.0))  # Milvus L2 is squared
                ids[r, c] = int(hit["entity"]["image_id"])
        return dist, ids

    def count_vectors(self, domain: str) -> int:
        name = self._vector_collection(domain)
        return 0 if name is None else self._count(name)

    # -- products -----------------------------------------------------------
    def get_product(self, product_id: str) -> ProductRecord | None:
        return self.get_products([product_id]).get(product_id)

    def get_products(self, product_ids: Sequence[str]) -> dict[str, ProductRecord]:
        return {pid: self._record(row) for pid, row in self._product_rows(product_ids).items()}

    def list_products(self, offset: int = 0, limit: int = 100) -> list[ProductRecord]:
        # Milvus orders query results by primary key only within a segment: sort here.
        rows = self._query(self._products, 'product_id != ""', ["product_id"])
        ids = sorted(r["product_id"] for r in rows)[offset : offset + limit]
        found = self.get_products(ids)
        return [found[i] for i in ids if i in found]

    def count_products(self) -> int:
        return self._count(self._products)

    def iter_products(self, batch: int = 1000) -> Iterator[ProductRecord]:
        """Every product, in no particular order (one pass, for migration)."""
        for row in self._query(self._products, 'product_id != ""', self._PRODUCT_FIELDS):
            yield self._record(row)

    # -- images -------------------------------------------------------------
    def find_image(self, product_id: str, source: str) -> ImageVersion | None:
        rows = self.client.query(self._images, filter=f"product_id == {_quote(product_id)} and source == {_quote(source)}",
                                 output_fields=["image_id", "sha1", "signature", "domain"], limit=1)
        return ImageVersion(int(rows[0]["image_id"]), rows[0]["sha1"], rows[0]["signature"], rows[0]["domain"]) if rows else None

    def product_images(self, product_id: str) -> list[StoredImage]:
        rows = self._query(self._images, f"product_id == {_quote(product_id)}", ["image_id", "domain", "source"])
        return sorted(StoredImage(int(r["image_id"]), r["domain"], r["source"]) for r in rows)

    def image_products(self, image_ids: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        ids = [int(i) for i in image_ids]
        for start in range(0, len(ids), _BATCH):
            for r in self.client.get(self._images, ids=ids[start : start + _BATCH], output_fields=["image_id", "product_id"]):
                out[int(r["image_id"])] = r["product_id"]
        return out

    def image_source(self, image_id: int) -> str | None:
        rows = self.client.get(self._images, ids=[int(image_id)], output_fields=["source"])
        return rows[0]["source"] if rows else None

    def image_sha1s(self, image_ids: Sequence[int]) -> dict[int, str]:
        ids = sorted({int(i) for i in image_ids})
        out: dict[int, str] = {}
        for start in range(0, len(ids), _BATCH):
            rows = self.client.get(self._images, ids=ids[start : start + _BATCH], output_fields=["sha1"])
            out.update((int(r["image_id"]), r["sha1"]) for r in rows)
        return out

    def sha1s_in_use(self, sha1s: Sequence[str]) -> set[str]:
        wanted = sorted(set(sha1s))
        out: set[str] = set()
        for start in range(0, len(wanted), _BATCH):
            out.update(r["sha1"] for r in self._query(self._images, _in("sha1", wanted[start : start + _BATCH]), ["sha1"]))
        return out

    def count_images(self, domain: str | None = None) -> int:
        return self._count(self._images, "" if domain is None else f"domain == {_quote(domain)}")

    def filter_image_ids(self, domain: str, filters: Sequence[Filter]) -> np.ndarray:
        """Milvus has no SQL: the domain's products are read in pages and the filters evaluated in Python
        (:func:`~shoplens.filters.matches`, the SQL's meaning); cost grows with the domain's products."""
        fields = ["product_id", "title", "category", "domain", "metadata", "images"]
        it = self.client.query_iterator(self._products, batch_size=4096, filter=f"domain == {_quote(domain)}", output_fields=fields)
        ids: list[int] = []
        try:
            while True:
                page = it.next()
                if not page:
                    break
                for row in page:
                    columns = {k: row.get(k) for k in ("product_id", "title", "category", "domain")}
                    if matches(filters, columns, dict(row.get("metadata") or {})):
                        ids.extend(int(i) for i in row.get("images") or [])
        finally:
            it.close()
        return np.sort(np.array(ids, dtype=np.int64))

    def image_ids(self, domain: str) -> np.ndarray:
        it = self.client.query_iterator(self._images, batch_size=4096, filter=f"domain == {_quote(domain)}", output_fields=["image_id"])
        ids: list[int] = []
        try:
            while True:
                page = it.next()
                if not page:
                    break
                ids.extend(int(r["image_id"]) for r in page)
        finally:
            it.close()
        return np.sort(np.array(ids, dtype=np.int64))

    def iter_raw(self, domain: str | None = None, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        expr = "image_id >= 0" if domain is None else f"domain == {_quote(domain)}"
        it = self.client.query_iterator(self._images, batch_size=min(batch, 4096), filter=expr, output_fields=["image_id", "raw"])
        try:
            while True:
                page = it.next()
                if not page:
                    return
                page.sort(key=lambda r: r["image_id"])
                yield np.array([r["image_id"] for r in page], dtype=np.int64), np.stack([_unb64(r["raw"]) for r in page])
        finally:
            it.close()

    def iter_images(self, batch: int = 1000) -> Iterator[ImageRecord]:
        """Every stored image with its raw descriptor (for migration)."""
        it = self.client.query_iterator(self._images, batch_size=batch, filter="image_id >= 0",
                                        output_fields=["product_id", "source", "sha1", "domain", "signature", "raw"])
        try:
            while True:
                page = it.next()
                if not page:
                    return
                for r in page:
                    yield ImageRecord(r["product_id"], r["source"], r["sha1"], r["domain"], r["signature"], _unb64(r["raw"]))
        finally:
            it.close()
