"""The metadata store: products, images and their raw descriptors, in SQLite.

SQLite is the source of truth of an embedded store. A write is acknowledged
when its transaction commits (WAL, ``synchronous=FULL``): it survives a crash
of the process or the machine. Every image added or removed is also written to
the ``changes`` log in the same transaction, so the vector indexes (derived
data) can be brought up to date after a crash by replaying the log.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import StoreError
from ..filters import Filter, to_sql

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: Indexes that answer "who owns these images" without reading the image rows (see MetadataDB).
_OWNER_INDEXES = {"images_owner", "products_owner"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    product_id TEXT PRIMARY KEY,
    title TEXT,
    category TEXT,
    category_source TEXT NOT NULL DEFAULT 'catalogue',
    domain TEXT NOT NULL,
    domain_source TEXT NOT NULL DEFAULT 'catalogue',
    metadata TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    image_id INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id TEXT NOT NULL REFERENCES products(product_id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    sha1 TEXT NOT NULL,
    domain TEXT NOT NULL,
    signature TEXT NOT NULL,
    raw BLOB NOT NULL,
    UNIQUE (product_id, source)
);
CREATE INDEX IF NOT EXISTS images_domain ON images(domain, image_id);
CREATE INDEX IF NOT EXISTS products_category ON products(category);
CREATE INDEX IF NOT EXISTS images_owner ON images(image_id, product_id);
CREATE INDEX IF NOT EXISTS products_owner ON products(product_id, category);
CREATE INDEX IF NOT EXISTS images_sha1 ON images(sha1);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL,
    domain TEXT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('add', 'del'))
);
"""


@dataclass(frozen=True)
class ProductRecord:
    product_id: str
    title: str | None
    category: str | None
    category_source: str
    domain: str
    domain_source: str
    metadata: dict[str, Any]

    def fields(self) -> dict[str, Any]:
        """The product as result fields: id, title, category, then metadata."""
        out: dict[str, Any] = {"product_id": self.product_id, "title": self.title, "category": self.category}
        for k, v in self.metadata.items():
            out.setdefault(k, v)
        return out


@dataclass(frozen=True)
class ImageRecord:
    """An image to write: its product, source, content hash and raw descriptor."""

    product_id: str
    source: str
    sha1: str
    domain: str
    signature: str
    raw: np.ndarray


class StoredImage(NamedTuple):
    """One of a product's stored images, as ``product_images`` lists them."""

    image_id: int
    domain: str
    source: str


class ImageVersion(NamedTuple):
    """What is stored of a product's image (``find_image``): enough to tell whether it must be embedded again."""

    image_id: int
    sha1: str
    #: The recognition model it was embedded with (``Embedder.signature``).
    signature: str
    domain: str


class Owner(NamedTuple):
    """The product an image shows and that product's category (``image_categories``)."""

    product_id: str
    category: str | None


@dataclass(frozen=True)
class Change:
    seq: int
    image_id: int
    domain: str
    op: str


def encode_raw(raw: np.ndarray) -> bytes:
    return np.asarray(raw, dtype=np.float16).tobytes()


def decode_raw(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float16).astype(np.float32)


class MetadataDB:
    """Thread-safe access to the store's SQLite database."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                uri = f"file:{path}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
            else:
                self._conn = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            # Up to 32 MiB of pages (SQLite's default is 2 MiB): the owner indexes of a store
            # of a few hundred thousand images stay in memory (docs/benchmarks.md).
            self._conn.execute("PRAGMA cache_size=-32768")
            owner_indexes = _OWNER_INDEXES <= self._names("index")
            if not readonly:
                if not owner_indexes and "images" in self._names("table"):
                    log.info("%s: adding the owner indexes of an older store, once (about 7 s per million images)", path)
                self._conn.executescript(_SCHEMA)  # creates whatever is missing, the owner indexes included
                self._check_version()
                owner_indexes = True
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{path}: cannot open the store database ({err})") from None
        self._lock = threading.RLock()
        # Who owns a candidate image is asked for hundreds of ids per search: the owner
        # indexes answer it from a few MB instead of the image rows, which hold the raw
        # descriptors (SQLite's planner would pick the rowid). A store opened read-only
        # that predates them reads the rows.
        self._images = "images INDEXED BY images_owner" if owner_indexes else "images"
        self._products = "products INDEXED BY products_owner" if owner_indexes else "products"

    def _names(self, kind: str) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type=?", (kind,))}

    def _check_version(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: store written by a newer shoplens (schema {row[0]} > {SCHEMA_VERSION})")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: committed (durably) on success, rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- meta ---------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # -- products -----------------------------------------------------------
    @staticmethod
    def upsert_product(c: sqlite3.Connection, record: ProductRecord) -> None:
        c.execute(
            """INSERT INTO products(product_id, title, category, category_source, domain, domain_source, metadata, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(product_id) DO UPDATE SET title=excluded.title, category=excluded.category,
                 category_source=excluded.category_source, domain=excluded.domain,
                 domain_source=excluded.domain_source, metadata=excluded.metadata, updated_at=excluded.updated_at""",
            (
                record.product_id,
                record.title,
                record.category,
                record.category_source,
                record.domain,
                record.domain_source,
                json.dumps(record.metadata, ensure_ascii=False, sort_keys=True),
                time.time(),
            ),
        )

    @staticmethod
    def _product(row: Sequence[Any]) -> ProductRecord:
        return ProductRecord(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]))

    _PRODUCT_COLUMNS = "product_id, title, category, category_source, domain, domain_source, metadata"

    def get_product(self, product_id: str) -> ProductRecord | None:
        rows = self.query(f"SELECT {self._PRODUCT_COLUMNS} FROM products WHERE product_id=?", (product_id,))
        return self._product(rows[0]) if rows else None

    def get_products(self, product_ids: Sequence[str]) -> dict[str, ProductRecord]:
        out: dict[str, ProductRecord] = {}
        ids = list(dict.fromkeys(product_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.query(f"SELECT {self._PRODUCT_COLUMNS} FROM products WHERE product_id IN ({marks})", chunk):
                rec = self._product(row)
                out[rec.product_id] = rec
        return out

    def list_products(self, offset: int = 0, limit: int = 100) -> list[ProductRecord]:
        rows = self.query(
            f"SELECT {self._PRODUCT_COLUMNS} FROM products ORDER BY product_id LIMIT ? OFFSET ?", (limit, offset)
        )
        return [self._product(r) for r in rows]

    def count_products(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM products")[0][0])

    def delete_product(self, c: sqlite3.Connection, product_id: str) -> list[tuple[int, str]]:
        """Delete a product and its images; returns the (image_id, domain) removed."""
        removed = c.execute("SELECT image_id, domain FROM images WHERE product_id=?", (product_id,)).fetchall()
        for image_id, domain in removed:
            c.execute("INSERT INTO changes(image_id, domain, op) VALUES (?, ?, 'del')", (image_id, domain))
        c.execute("DELETE FROM products WHERE product_id=?", (product_id,))
        return [(int(i), str(d)) for i, d in removed]

    # -- images -------------------------------------------------------------
    def find_image(self, product_id: str, source: str) -> ImageVersion | None:
        """What is stored of a product's image, if it is."""
        rows = self.query(
            "SELECT image_id, sha1, signature, domain FROM images WHERE product_id=? AND source=?", (product_id, source)
        )
        return ImageVersion(int(rows[0][0]), rows[0][1], rows[0][2], rows[0][3]) if rows else None

    @staticmethod
    def insert_image(c: sqlite3.Connection, record: ImageRecord) -> int:
        cur = c.execute(
            "INSERT INTO images(product_id, source, sha1, domain, signature, raw) VALUES (?, ?, ?, ?, ?, ?)",
            (record.product_id, record.source, record.sha1, record.domain, record.signature, encode_raw(record.raw)),
        )
        image_id = int(cur.lastrowid)  # type: ignore[arg-type]
        c.execute("INSERT INTO changes(image_id, domain, op) VALUES (?, ?, 'add')", (image_id, record.domain))
        return image_id

    @staticmethod
    def delete_image(c: sqlite3.Connection, image_id: int, domain: str) -> None:
        c.execute("INSERT INTO changes(image_id, domain, op) VALUES (?, ?, 'del')", (image_id, domain))
        c.execute("DELETE FROM images WHERE image_id=?", (image_id,))

    def product_images(self, product_id: str) -> list[StoredImage]:
        """A product's images, by image id."""
        rows = self.query("SELECT image_id, domain, source FROM images WHERE product_id=? ORDER BY image_id", (product_id,))
        return [StoredImage(int(i), d, s) for i, d, s in rows]

    def image_products(self, image_ids: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        ids = [int(i) for i in image_ids]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for i, p in self.query(f"SELECT image_id, product_id FROM {self._images} WHERE image_id IN ({marks})", chunk):
                out[int(i)] = p
        return out

    def image_categories(self, image_ids: Sequence[int]) -> dict[int, Owner]:
        """image id -> (product id, category), for the ids that exist (one join, no metadata decoded)."""
        out: dict[int, Owner] = {}
        ids = sorted({int(i) for i in image_ids})
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = (
                f"SELECT images.image_id, images.product_id, products.category FROM {self._images} "
                f"JOIN {self._products} ON products.product_id = images.product_id WHERE images.image_id IN ({marks})"
            )
            for i, p, c in self.query(sql, chunk):
                out[int(i)] = Owner(p, c)
        return out

    def category_sizes(self, domain: str) -> dict[str, int]:
        """Products per category in ``domain`` ("" for none)."""
        sql = "SELECT COALESCE(category, ''), COUNT(*) FROM products WHERE domain=? GROUP BY COALESCE(category, '')"
        return {str(c): int(n) for c, n in self.query(sql, (domain,))}

    def image_source(self, image_id: int) -> str | None:
        rows = self.query("SELECT source FROM images WHERE image_id=?", (image_id,))
        return rows[0][0] if rows else None

    def image_sha1s(self, image_ids: Sequence[int]) -> dict[int, str]:
        """image id -> content hash of its photo, for the ids that exist (one query per 500)."""
        out: dict[int, str] = {}
        ids = sorted({int(i) for i in image_ids})
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            out.update((int(i), s) for i, s in self.query(f"SELECT image_id, sha1 FROM images WHERE image_id IN ({marks})", chunk))
        return out

    def sha1s_in_use(self, sha1s: Sequence[str]) -> set[str]:
        """Which of these content hashes some stored image has."""
        out: set[str] = set()
        wanted = sorted(set(sha1s))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            out.update(r[0] for r in self.query(f"SELECT DISTINCT sha1 FROM images WHERE sha1 IN ({marks})", chunk))
        return out

    def iter_raw(self, domain: str | None = None, batch: int = 4096, image_ids: Sequence[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(image_ids, raw descriptors) in batches, by image id."""
        if image_ids is not None:
            ids = sorted(int(i) for i in image_ids)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self.query(f"SELECT image_id, raw FROM images WHERE image_id IN ({marks}) ORDER BY image_id", chunk)
                if rows:
                    yield np.array([r[0] for r in rows], dtype=np.int64), np.stack([decode_raw(r[1]) for r in rows])
            return
        last = -1
        while True:
            if domain is None:
                rows = self.query("SELECT image_id, raw FROM images WHERE image_id>? ORDER BY image_id LIMIT ?", (last, batch))
            else:
                rows = self.query(
                    "SELECT image_id, raw FROM images WHERE domain=? AND image_id>? ORDER BY image_id LIMIT ?", (domain, last, batch)
                )
            if not rows:
                return
            last = int(rows[-1][0])
            yield np.array([r[0] for r in rows], dtype=np.int64), np.stack([decode_raw(r[1]) for r in rows])

    _FILTER_COLUMNS = {"product_id": "p.product_id", "title": "p.title", "category": "p.category", "domain": "p.domain"}

    def filter_image_ids(self, domain: str, filters: Sequence[Filter]) -> np.ndarray:
        """Ids of the domain's images whose product passes every filter (evaluated in SQL)."""
        where, params = to_sql(filters, self._FILTER_COLUMNS, "p.metadata")
        rows = self.query(
            f"SELECT i.image_id FROM images i JOIN products p ON p.product_id = i.product_id WHERE i.domain = ? AND {where}",
            [domain, *params],
        )
        return np.array([r[0] for r in rows], dtype=np.int64)
    def iter_images(self, batch: int = 1000) -> Iterator[ImageRecord]:
        """Every image with its raw descriptor, by image id."""
        last = -1
        while True:
            rows = self.query(
                "SELECT image_id, product_id, source, sha1, domain, signature, raw FROM images WHERE image_id>? ORDER BY image_id LIMIT ?",
                (last, batch),
            )
            if not rows:
                return
            last = int(rows[-1][0])
            for _, pid, source, sha1, domain, signature, raw in rows:
                yield ImageRecord(pid, source, sha1, domain, signature, decode_raw(raw))

    def image_ids(self, domain: str) -> np.ndarray:
        rows = self.query("SELECT image_id FROM images WHERE domain=? ORDER BY image_id", (domain,))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def count_images(self, domain: str | None = None) -> int:
        if domain is None:
            return int(self.query("SELECT COUNT(*) FROM images")[0][0])
        return int(self.query("SELECT COUNT(*) FROM images WHERE domain=?", (domain,))[0][0])

    # -- change log ---------------------------------------------------------
    def last_seq(self) -> int:
        row = self.query("SELECT MAX(seq) FROM changes")[0][0]
        if row is None:  # empty (possibly compacted) log: sqlite_sequence keeps the high-water mark
            seq = self.query("SELECT seq FROM sqlite_sequence WHERE name='changes'")
            return int(seq[0][0]) if seq else 0
        return int(row)

    def first_seq(self) -> int | None:
        row = self.query("SELECT MIN(seq) FROM changes")[0][0]
        return None if row is None else int(row)

    def changes_after(self, seq: int, domain: str) -> list[Change]:
        return [
            Change(int(s), int(i), d, op)
            for s, i, d, op in self.query(
                "SELECT seq, image_id, domain, op FROM changes WHERE seq>? AND domain=? ORDER BY seq", (seq, domain)
            )
        ]

    def compact_changes(self, upto: int) -> None:
        """Forget changes every persisted index has applied."""
        with self.transaction() as c:
            c.execute("DELETE FROM changes WHERE seq<=?", (upto,))
