"""The one interface every catalogue store implements.

The pipeline, the indexer and the faces use only these methods, so the
embedded store (SQLite + FAISS in a folder) and a distributed one are
interchangeable.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import StoreError
from ..filters import Filter
from .artifacts import StoreArtifacts
from .metadata import ImageRecord, ImageVersion, Owner, ProductRecord, StoredImage


class Projector(Protocol):
    """Raw descriptors -> indexed vectors, per domain (the embed heads)."""

    def project(self, domain: str, raw: np.ndarray) -> np.ndarray: ...

    def version(self, domain: str) -> str: ...


@dataclass
class WriteBatch:
    """One atomic change: products to upsert, images to add and to remove."""

    products: list[ProductRecord] = field(default_factory=list)
    add_images: list[ImageRecord] = field(default_factory=list)
    remove_images: list[tuple[int, str]] = field(default_factory=list)  # (image_id, domain)
    delete_products: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.products or self.add_images or self.remove_images or self.delete_products)


class CatalogueStore(abc.ABC):
    """Products, their images' raw descriptors, and per-domain vector search."""

    #: Folder for models trained for this catalogue (heads, classifiers).
    models_dir: Path
    #: Local folder of the store's own files (saved configuration, models).
    root: Path
    #: Registered engine name ("embedded", "milvus").
    engine: str = ""
    #: Where the store is, as :func:`~shoplens.store.open_catalogue_store` accepts it.
    location: str = ""
    #: Turns raw descriptors into vectors; may be attached after opening.
    projector: Projector | None = None
    index_kind: str = "auto"
    #: Whether this process is the store's only writer (it holds the store's writer lock).
    exclusive: bool = False

    @property
    def artifacts(self) -> StoreArtifacts:
        """The store's model files and saved configuration (their paths and hashes)."""
        return StoreArtifacts(self.root, self.models_dir)

    def attach(self, projector: Projector, *, index: str | None = None) -> None:
        """Use ``projector`` (and the configured index kind) from now on."""
        self.projector = projector
        if index is not None:
            self.index_kind = index

    # -- writes ---------------------------------------------------------------
    @abc.abstractmethod
    def write(self, batch: WriteBatch) -> list[int]:
        """Apply ``batch`` atomically and durably; returns the new image ids.

        When it returns, the change is visible to searches.
        """

    @abc.abstractmethod
    def reproject(self, domain: str) -> None:
        """Re-project every stored raw descriptor (after the domain's head changed)."""

    def persist(self) -> None:  # noqa: B027 - optional: a no-op where there is nothing to save
        """Save derived state (indexes) so the next open is fast."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- vector search ------------------------------------------------------
    @abc.abstractmethod
    def search(self, domain: str, vectors: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, image ids), each (n, k'), k' <= k; −1 ids are empty slots."""

    def warm_up(self) -> None:  # noqa: B027 - optional: a no-op for an engine that loads eagerly
        """Load what the first search needs (an engine that loads lazily overrides this)."""

    def filter_image_ids(self, domain: str, filters: Sequence[Filter]) -> np.ndarray:
        """Ids of the domain's images whose product passes every metadata filter.

        The result is the ``allowed`` set of :meth:`search`, so filters apply
        inside the index search.
        """
        raise StoreError(f"{type(self).__name__} does not support metadata filters")

    # -- products -----------------------------------------------------------
    @abc.abstractmethod
    def get_product(self, product_id: str) -> ProductRecord | None: ...

    @abc.abstractmethod
    def get_products(self, product_ids: Sequence[str]) -> dict[str, ProductRecord]: ...

    @abc.abstractmethod
    def list_products(self, offset: int = 0, limit: int = 100) -> list[ProductRecord]: ...

    @abc.abstractmethod
    def count_products(self) -> int: ...

    # -- images -------------------------------------------------------------
    @abc.abstractmethod
    def find_image(self, product_id: str, source: str) -> ImageVersion | None:
        """What is stored of a product's image (id, content hash, model signature, domain), if it is."""

    @abc.abstractmethod
    def product_images(self, product_id: str) -> list[StoredImage]:
        """A product's images (id, domain, source), by image id."""

    @abc.abstractmethod
    def image_products(self, image_ids: Sequence[int]) -> dict[int, str]:
        """image id -> product id, for the ids that exist."""

    def image_categories(self, image_ids: Sequence[int]) -> dict[int, Owner]:
        """image id -> (product id, product category), for the ids whose image and product exist.

        What a search needs of every candidate before it picks the few it
        returns; an engine that can answers it in one query.
        """
        products = self.image_products(image_ids)
        records = self.get_products(list(set(products.values())))
        return {i: Owner(p, records[p].category) for i, p in products.items() if p in records}

    def category_sizes(self, domain: str) -> dict[str, int]:
        """Products per category in ``domain`` ("" for none); an engine that can counts them in one query."""
        sizes: dict[str, int] = {}
        for record in self.iter_products():
            if record.domain == domain:
                sizes[record.category or ""] = sizes.get(record.category or "", 0) + 1
        return sizes

    @abc.abstractmethod
    def image_source(self, image_id: int) -> str | None: ...

    def image_sha1s(self, image_ids: Sequence[int]) -> dict[int, str]:
        """image id -> content hash of its photo, for the ids that exist; an engine that can answers in one query."""
        out: dict[int, str] = {}
        owners = self.image_products(image_ids)
        for image_id, product in owners.items():
            source = self.image_source(image_id)
            found = None if source is None else self.find_image(product, source)
            if found is not None and found.image_id == image_id:
                out[image_id] = found.sha1
        return out

    @abc.abstractmethod
    def count_images(self, domain: str | None = None) -> int: ...

    def sha1s_in_use(self, sha1s: Sequence[str]) -> set[str]:
        """Which of these content hashes some stored image has (an engine that can answers it from an index)."""
        wanted = set(sha1s)
        return {im.sha1 for im in self.iter_images() if im.sha1 in wanted} if wanted else set()

    def image_ids(self, domain: str) -> np.ndarray:
        """Ids of the domain's stored images, ascending (int64)."""
        parts = [ids for ids, _ in self.iter_raw(domain)]
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)

    @abc.abstractmethod
    def count_vectors(self, domain: str) -> int:
        """Vectors in the domain's searchable index (== ``count_images(domain)`` when consistent)."""

    @abc.abstractmethod
    def iter_images(self, batch: int = 1000) -> Iterator[ImageRecord]:
        """Every stored image with its raw descriptor (for migration)."""

    def iter_products(self, batch: int = 1000) -> Iterator[ProductRecord]:
        """Every product, in pages."""
        offset = 0
        while True:
            page = self.list_products(offset, batch)
            yield from page
            if len(page) < batch:
                return
            offset += batch

    @abc.abstractmethod
    def iter_raw(self, domain: str | None = None, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(image ids, raw descriptors) in batches."""

    def __enter__(self) -> CatalogueStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
