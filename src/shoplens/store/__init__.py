"""The catalogue store: metadata and raw descriptors (SQLite) + vector indexes.

:class:`EmbeddedStore` keeps everything in one folder (``--store DIR``):

```
DIR/shoplens.sqlite       products, images, raw descriptors, change log (source of truth)
DIR/index/<domain>.vidx   FAISS index per domain partition (derived; rebuilt when missing or damaged)
DIR/models/               heads and classifiers trained for this catalogue
DIR/config.json           the resolved configuration the index was built with
```

The store knows no model: turning raw descriptors into vectors is the job of
a :class:`Projector` the pipeline hands it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..config import DOMAINS
from ..errors import StoreError
from ..filters import Filter
from .base import CatalogueStore, Projector, WriteBatch
from .metadata import Change, ImageRecord, MetadataDB, ProductRecord
from .vectors import FaissIndex, VectorIndex

log = logging.getLogger(__name__)

DB_NAME = "shoplens.sqlite"


class EmbeddedStore(CatalogueStore):
    """SQLite + FAISS in one folder; safe for one writer process at a time."""

    def __init__(self, root: str | Path, projector: Projector, *, create: bool = True) -> None:
        self.root = Path(root)
        if not self.root.exists():
            if not create:
                raise StoreError(f"{self.root}: no such store (run 'shoplens index ... --store {self.root}' first)")
            self.root.mkdir(parents=True)
        elif not self.root.is_dir():
            raise StoreError(f"{self.root}: not a folder")
        elif not create and not (self.root / DB_NAME).exists():
            raise StoreError(f"{self.root}: not a shoplens store (no {DB_NAME})")
        (self.root / "index").mkdir(exist_ok=True)
        (self.root / "models").mkdir(exist_ok=True)
        self.db = MetadataDB(self.root / DB_NAME)
        self.projector = projector
        self._indexes: dict[str, VectorIndex] = {}
        self._lock = threading.RLock()

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def close(self) -> None:
        with self._lock:
            self.persist()
            self.db.close()

    # -- writes -------------------------------------------------------------
    def write(self, batch: WriteBatch) -> list[int]:
        """Apply ``batch`` atomically; returns the new image ids.

        When this returns, the change is durable (committed) and visible to
        searches in this process.
        """
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
                self._indexes[domain].add(np.array([i for i, _ in picked], dtype=np.int64), self.projector.project(domain, raw))
        last = self.db.last_seq()
        for index in self._indexes.values():
            index.applied_seq = last

    # -- vector indexes -----------------------------------------------------
    def _index_path(self, domain: str) -> Path:
        return self.root / "index" / f"{domain}.vidx"

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
        version = self.projector.version(domain)
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
        first = self.db.first_seq()
        if first is not None and index.applied_seq < first - 1 and index.applied_seq < self.db.last_seq():
            log.warning("vector index %s is older than the change log: rebuilding it", path)
            return self.rebuild(domain)
        if first is None and index.applied_seq < self.db.last_seq():
            log.warning("vector index %s is older than the change log: rebuilding it", path)
            return self.rebuild(domain)
        self._catch_up(domain, index)
        return index

    def _catch_up(self, domain: str, index: VectorIndex) -> None:
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
            index.add(ids, self.projector.project(domain, raw))
        index.applied_seq = max(ch.seq for ch in changes)
        log.info("vector index %s: replayed %d change(s)", domain, len(changes))

    def rebuild(self, domain: str) -> VectorIndex:
        """Rebuild a domain's index from the stored raw descriptors."""
        with self._lock:
            seq = self.db.last_seq()
            index: VectorIndex | None = None
            for ids, raw in self.db.iter_raw(domain):
                vectors = self.projector.project(domain, raw)
                if index is None:
                    index = FaissIndex(vectors.shape[1])
                index.add(ids, vectors)
            if index is None:
                index = FaissIndex(1)  # empty: takes its dimension from the first vectors added
            index.applied_seq = seq
            index.head_id = self.projector.version(domain)
            self._indexes[domain] = index
            return index

    def reproject(self, domain: str) -> None:
        """Re-project every stored descriptor (after the domain's head changed)."""
        self.rebuild(domain)
        self.persist()

    def persist(self) -> None:
        """Save every loaded index and forget the changes they all hold."""
        with self._lock:
            for domain, index in self._indexes.items():
                index.head_id = self.projector.version(domain)
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

    def find_image(self, product_id: str, source: str) -> tuple[int, str, str, str] | None:
        return self.db.find_image(product_id, source)

    def product_images(self, product_id: str) -> list[tuple[int, str, str]]:
        return self.db.product_images(product_id)

    def image_products(self, image_ids: Sequence[int]) -> dict[int, str]:
        return self.db.image_products(image_ids)

    def image_source(self, image_id: int) -> str | None:
        return self.db.image_source(image_id)

    def count_images(self, domain: str | None = None) -> int:
        return self.db.count_images(domain)

    def iter_raw(self, domain: str | None = None, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.db.iter_raw(domain, batch)


__all__ = ["CatalogueStore", "EmbeddedStore", "FaissIndex", "ImageRecord", "MetadataDB", "ProductRecord", "Projector", "VectorIndex", "WriteBatch"]
