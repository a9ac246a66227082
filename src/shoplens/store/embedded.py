"""The default engine: SQLite (metadata, raw descriptors, change log) and a FAISS index per domain, in one folder."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..config import DOMAINS
from ..errors import StoreError
from ..filters import Filter
from .artifacts import MODELS_DIR
from .base import CatalogueStore, Projector, WriteBatch
from .lock import WriterLock
from .metadata import Change, ImageRecord, ImageVersion, MetadataDB, Owner, ProductRecord, StoredImage
from .vectors import AUTO_ANN_KIND, INDEX_KINDS, FaissIndex, VectorIndex, ann_params, ann_threshold

log = logging.getLogger(__name__)

DB_NAME = "shoplens.sqlite"


class EmbeddedStore(CatalogueStore):
    """SQLite + FAISS in one folder: one writer process at a time, any number of readers.

    A writer (the default) holds the store's writer lock from open to
    :meth:`close`; opening a store another writer holds raises
    :class:`~shoplens.errors.StoreBusyError` at once. ``read_only=True``
    opens an existing store for searching and reading: no lock, a read-only
    SQLite connection, nothing saved at close; each search catches up on what
    the writer committed since.

    At open, and at :meth:`persist`, each vector index is checked against the
    image rows of its domain; vectors missing are added from the stored
    descriptors and vectors no row holds are removed, with a warning.

    ``index``: ``"auto"`` (exact below ``ann_threshold`` vectors per domain,
    by default :func:`~shoplens.store.vectors.ann_threshold` of the vectors'
    dimension; :data:`~shoplens.store.vectors.AUTO_ANN_KIND` above), or one of
    ``flat``, ``ivfflat``, ``ivfsq8``, ``ivfpq``. ``ann`` overrides the
    approximate index's parameters (``nlist``, ``nprobe``, ``m``). An index
    whose kind no longer fits (the catalogue grew past the threshold, or
    outgrew the lists it was trained with) is retrained from the stored
    descriptors when the store is persisted (end of an indexing run).
    """

    engine = "embedded"

    def __init__(
        self,
        root: str | Path,
        projector: Projector | None,
        *,
        create: bool = True,
        index: str = "auto",
        ann_threshold: int | None = None,
        ann: dict[str, int] | None = None,
        read_only: bool = False,
    ) -> None:
        if index not in INDEX_KINDS:
            raise StoreError(f"unknown vector index kind {index!r}; known: {', '.join(INDEX_KINDS)}")
        self.index_kind = index
        self.ann_threshold = ann_threshold
        self.ann = dict(ann or {})
        self.root = Path(root)
        self.read_only = read_only
        create = create and not read_only
        if not self.root.exists():
            if not create:
                raise StoreError(f"{self.root}: no such store (run 'shoplens index ... --store {self.root}' first)")
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise StoreError(f"{self.root}: not a folder")
        elif not create and not (self.root / DB_NAME).exists():
            raise StoreError(f"{self.root}: not a shoplens store (no {DB_NAME})")
        self.writer_lock: WriterLock | None = None
        if not read_only:
            self.writer_lock = WriterLock(self.root)
            self.writer_lock.acquire()  # before anything is read: what a writer reads, it may save
            self.exclusive = True
        try:
            if not read_only:
                (self.root / "index").mkdir(exist_ok=True)
                self.models_dir.mkdir(exist_ok=True)
            self.db = MetadataDB(self.root / DB_NAME, readonly=read_only)
        except BaseException:
            if self.writer_lock is not None:
                self.writer_lock.release()
            raise
        self.projector = projector  # type: ignore[assignment]
        self._indexes: dict[str, VectorIndex] = {}
        self._lock = threading.RLock()
        self._closed = False

    @property
    def models_dir(self) -> Path:  # type: ignore[override]
        return self.root / MODELS_DIR

    @property
    def _projector(self) -> Projector:
        if self.projector is None:
            raise StoreError(f"{self.root}: no projector attached: the store cannot build vector indexes")
        return self.projector

    @property
    def location(self) -> str:  # type: ignore[override]
        return str(self.root)

    def attach(self, projector: Projector, *, index: str | None = None) -> None:
        if index is not None and index not in INDEX_KINDS:
            raise StoreError(f"unknown vector index kind {index!r}; known: {', '.join(INDEX_KINDS)}")
        with self._lock:
            super().attach(projector, index=index)

    def close(self) -> None:
        """Persist (a writer), close the database, and let the next writer in."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.persist()
            finally:
                self.db.close()
                if self.writer_lock is not None:
                    self.writer_lock.release()

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.root}: opened read-only: writes go through the store's writer")

    # -- writes -------------------------------------------------------------
    def write(self, batch: WriteBatch) -> list[int]:
        """Apply ``batch`` atomically; returns the new image ids.

        When this returns, the change is durable (committed) and visible to
        searches in this process.
        """
        self._check_writable()
        if not batch:
            return []
        with self._lock:
            for domain in DOMAINS:
                self.index(domain)  # loaded (and caught up) before the change, so it can apply it
            removed: list[tuple[int, str]] = list(batch.remove_images)
            new_ids: list[int] = []
            with self.db.transaction() as c:
                for product_id in batch.delete_products:
                    removed.extend(self.db.delete_product(c, product_id))
                for image_id, domain in batch.remove_images:
                    self.db.delete_image(c, image_id, domain)
                for product in batch.products:
                    self.db.upsert_product(c, product)
                for image in batch.add_images:
                    new_ids.append(self.db.insert_image(c, image))
            self._apply_removed(removed)
            self._apply_added(new_ids, batch.add_images)
            return new_ids

    def _apply_removed(self, removed: Sequence[tuple[int, str]]) -> None:
        for domain in DOMAINS:
            ids = np.array([i for i, d in removed if d == domain], dtype=np.int64)
            if len(ids):
                self._indexes[domain].remove(ids)

    def _apply_added(self, ids: Sequence[int], images: Sequence[ImageRecord]) -> None:
        for domain in DOMAINS:
            picked = [(i, im.raw) for i, im in zip(ids, images) if im.domain == domain]
            if picked:
                raw = np.stack([np.asarray(r, dtype=np.float16).astype(np.float32) for _, r in picked])
                self._indexes[domain].add(np.array([i for i, _ in picked], dtype=np.int64), self._projector.project(domain, raw))
        last = self.db.last_seq()
        for index in self._indexes.values():
            index.applied_seq = last

    # -- vector indexes -----------------------------------------------------
    def _index_path(self, domain: str) -> Path:
        return self.root / "index" / f"{domain}.vidx"

    def warm_up(self) -> None:
        for domain in DOMAINS:
            self.index(domain)

    def index(self, domain: str) -> VectorIndex:
        """The domain's vector index, loaded, rebuilt or caught up as needed."""
        with self._lock:
            index = self._indexes.get(domain)
            if index is None:
                index = self._load_or_rebuild(domain)
                self._indexes[domain] = index
            else:
                self._catch_up(domain, index)
            return index

    def _load_or_rebuild(self, domain: str) -> VectorIndex:
        path = self._index_path(domain)
        version = self._projector.version(domain)
        try:
            index = FaissIndex.load(path)
        except FileNotFoundError:
            if self.db.count_images(domain):
                log.warning("vector index %s is missing: rebuilding it from the stored descriptors", path)
            return self.rebuild(domain)
        except StoreError as err:
            log.warning("%s: rebuilding it from the stored descriptors", err)
            return self.rebuild(domain)
        if index.head_id != version:
            log.info("vector index %s was built with another head: re-projecting the stored descriptors", path)
            return self.rebuild(domain)
        if self.index_kind != "auto" and index.kind != self.index_kind and len(index):
            log.info("vector index %s is %s, configured %s: rebuilding it", path, index.kind, self.index_kind)
            return self.rebuild(domain)
        if self._log_gap(index):
            log.warning("vector index %s is older than the change log: rebuilding it", path)
            return self.rebuild(domain)
        self._catch_up(domain, index)
        # The change log tells what happened since the index was saved, not whether the
        # saved index held everything then: the rows decide.
        self._reconcile(domain, index)
        return index

    def _log_gap(self, index: VectorIndex) -> bool:
        """Whether the change log was compacted past what ``index`` has applied (it cannot be replayed)."""
        first = self.db.first_seq()
        if first is not None:
            return index.applied_seq < first - 1 and index.applied_seq < self.db.last_seq()
        return index.applied_seq < self.db.last_seq()

    def _reconcile(self, domain: str, index: VectorIndex, *, by_count: bool = False) -> int:
        """Make ``index`` hold exactly the domain's stored images; returns how many vectors changed.

        Vectors missing are projected from the stored descriptors, vectors of
        images no row holds are removed. ``by_count``: compare the ids only
        when the counts differ (the cheap check of :meth:`persist`).
        """
        if by_count and len(index) == self.db.count_images(domain):
            return 0
        stored = self.db.image_ids(domain)
        held = np.unique(index.ids())
        missing = np.setdiff1d(stored, held, assume_unique=True)
        extra = np.setdiff1d(held, stored, assume_unique=True)
        if not len(missing) and not len(extra):
            return 0
        log.warning(
            "vector index %s: %d stored image(s) had no vector and %d vector(s) no stored image: "
            "repaired from the stored descriptors", domain, len(missing), len(extra),
        )
        index.remove(extra)
        for ids, raw in self.db.iter_raw(image_ids=missing.tolist()):
            index.add(ids, self._projector.project(domain, raw))
        return len(missing) + len(extra)

    def _catch_up(self, domain: str, index: VectorIndex) -> None:
        if self.read_only and self._log_gap(index):
            # The writer persisted and compacted the log past this reader's index: compare the ids instead.
            last = self.db.last_seq()
            self._reconcile(domain, index)
            index.applied_seq = last
            return
        changes: list[Change] = self.db.changes_after(index.applied_seq, domain)
        if not changes:
            index.applied_seq = max(index.applied_seq, self.db.last_seq())
            return
        # Replay in order; the final state of each image decides.
        final: dict[int, str] = {}
        for ch in changes:
            final[ch.image_id] = ch.op
        dels = np.array([i for i, op in final.items() if op == "del"], dtype=np.int64)
        adds = [i for i, op in final.items() if op == "add"]
        index.remove(dels)
        for ids, raw in self.db.iter_raw(image_ids=adds):
            index.add(ids, self._projector.project(domain, raw))
        index.applied_seq = max(ch.seq for ch in changes)
        log.info("vector index %s: replayed %d change(s)", domain, len(changes))

    def threshold(self, dim: int) -> int:
        """Vectors per partition from which ``auto`` is approximate (given, or scaled by ``dim``)."""
        return self.ann_threshold if self.ann_threshold is not None else ann_threshold(dim)

    def wanted_kind(self, count: int, dim: int) -> str:
        """The index kind for a partition of ``count`` vectors of ``dim`` dimensions."""
        if self.index_kind != "auto":
            return self.index_kind
        return AUTO_ANN_KIND if count >= self.threshold(dim) else "flat"

    def _dim(self, domain: str) -> int:
        """Dimension of ``domain``'s projected vectors (0 when it has none)."""
        for _, raw in self.db.iter_raw(domain, batch=1):
            return int(self._projector.project(domain, raw).shape[1])
        return 0

    def rebuild(self, domain: str) -> VectorIndex:
        """Rebuild a domain's index from the stored raw descriptors.

        An approximate index is first trained on a random sample of them.
        """
        with self._lock:
            seq = self.db.last_seq()
            count = self.db.count_images(domain)
            kind = self.wanted_kind(count, self._dim(domain)) if count else "flat"
            index: FaissIndex | None = None
            if kind != "flat":
                index = self._train(domain, kind, count)
            for ids, raw in self.db.iter_raw(domain):
                vectors = self._projector.project(domain, raw)
                if index is None:
                    index = FaissIndex(vectors.shape[1])
                index.add(ids, vectors)
            if index is None:
                index = FaissIndex(1)  # empty: takes its dimension from the first vectors added
            index.applied_seq = seq
            index.head_id = self._projector.version(domain)
            self._indexes[domain] = index
            if kind != "flat":
                log.info("vector index %s: %s over %d vectors (%s)", domain, kind, len(index), index.params)
            return index

    def _train(self, domain: str, kind: str, count: int) -> FaissIndex:
        rows = self.db.query("SELECT image_id FROM images WHERE domain=?", (domain,))
        all_ids = np.array([r[0] for r in rows], dtype=np.int64)
        params = {**ann_params(kind, count, 1), **self.ann}
        size = min(len(all_ids), max(64 * int(params["nlist"]), 39 * 256 if kind == "ivfpq" else 0))
        picked = np.random.default_rng(0).choice(all_ids, size=size, replace=False)
        sample = np.concatenate([self._projector.project(domain, raw) for _, raw in self.db.iter_raw(image_ids=picked.tolist())])
        if kind == "ivfpq" and "m" not in self.ann:
            params.pop("m", None)
        return FaissIndex.trained(kind, sample, params)

    def _retune(self, domain: str, index: VectorIndex) -> None:
        """Retrain a partition whose index kind or size no longer fits its vector count."""
        n = len(index)
        if n == 0:
            return  # nothing to train on yet: an empty partition stays flat
        kind = self.wanted_kind(n, index.dim)
        if self.index_kind == "auto" and index.kind != "flat" and n >= self.threshold(index.dim) // 2:
            kind = index.kind  # hysteresis: stay approximate until well below the threshold
        # Outgrown: the lists it was trained with are a quarter of what its size now calls for.
        grown = isinstance(index, FaissIndex) and not index.exact and "nlist" not in self.ann and (
            ann_params(index.kind, n, index.dim)["nlist"] >= 4 * int(index.params.get("nlist", 1))
        )
        if kind != index.kind or grown:
            log.info("vector index %s: %d vectors, %s -> %s: retraining from the stored descriptors", domain, n, index.kind, kind)
            self.rebuild(domain)

    def reproject(self, domain: str) -> None:
        """Re-project every stored descriptor (after the domain's head changed)."""
        self._check_writable()
        self.rebuild(domain)
        self.persist()

    def persist(self) -> None:
        """Save every loaded index and forget the changes they all hold (a reader saves nothing)."""
        if self.read_only:
            return
        with self._lock:
            for domain in list(self._indexes):
                self._catch_up(domain, self._indexes[domain])
                self._reconcile(domain, self._indexes[domain], by_count=True)
                self._retune(domain, self._indexes[domain])
            for domain, index in self._indexes.items():
                index.head_id = self._projector.version(domain)
                index.save(self._index_path(domain))
            if self._indexes and set(self._indexes) >= {d for d in DOMAINS if self._index_path(d).exists()}:
                low = min(ix.applied_seq for ix in self._indexes.values())
                self.db.compact_changes(low)

    # -- reads --------------------------------------------------------------
    def search(
        self, domain: str, vectors: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        # Under the lock: a FAISS index must not be searched while a writer changes it.
        with self._lock:
            index = self.index(domain)
            if len(index) == 0:
                n = len(vectors)
                return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
            return index.search(vectors, k, allowed)

    def filter_image_ids(self, domain: str, filters: Sequence[Filter]) -> np.ndarray:
        return self.db.filter_image_ids(domain, filters)

    # -- products and images (the metadata database answers) ----------------
    def get_product(self, product_id: str) -> ProductRecord | None:
        return self.db.get_product(product_id)

    def get_products(self, product_ids: Sequence[str]) -> dict[str, ProductRecord]:
        return self.db.get_products(product_ids)

    def list_products(self, offset: int = 0, limit: int = 100) -> list[ProductRecord]:
        return self.db.list_products(offset, limit)

    def count_products(self) -> int:
        return self.db.count_products()

    def find_image(self, product_id: str, source: str) -> ImageVersion | None:
        return self.db.find_image(product_id, source)

    def product_images(self, product_id: str) -> list[StoredImage]:
        return self.db.product_images(product_id)

    def image_products(self, image_ids: Sequence[int]) -> dict[int, str]:
        return self.db.image_products(image_ids)

    def image_categories(self, image_ids: Sequence[int]) -> dict[int, Owner]:
        return self.db.image_categories(image_ids)

    def category_sizes(self, domain: str) -> dict[str, int]:
        return self.db.category_sizes(domain)

    def image_source(self, image_id: int) -> str | None:
        return self.db.image_source(image_id)

    def image_sha1s(self, image_ids: Sequence[int]) -> dict[int, str]:
        return self.db.image_sha1s(image_ids)

    def sha1s_in_use(self, sha1s: Sequence[str]) -> set[str]:
        return self.db.sha1s_in_use(sha1s)

    def count_images(self, domain: str | None = None) -> int:
        return self.db.count_images(domain)

    def image_ids(self, domain: str) -> np.ndarray:
        return self.db.image_ids(domain)

    def iter_raw(self, domain: str | None = None, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.db.iter_raw(domain, batch)

    def count_vectors(self, domain: str) -> int:
        return len(self.index(domain))

    def iter_images(self, batch: int = 1000) -> Iterator[ImageRecord]:
        return self.db.iter_images(batch)
