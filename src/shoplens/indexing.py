"""The indexing pipeline: read → decode → embed → write, each stage timed.

A catalogue (CSV or folder) describes products; each product listed gets
exactly the images listed for it. Images whose file content and recognition
model are unchanged are not decoded or embedded again, so re-running the same
catalogue changes nothing. Each chunk of products is written in one
transaction: a crash loses at most the chunk being written, never half of it.
A row that cannot be used (missing file, corrupt image, bad id) is reported and
the others go on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from .catalog import CatalogueRow
from .config import DOMAINS, INTENTS
from .errors import BadImageError
from .imaging import ImageSource, Photo, load_image, read_image_file
from .intent.imagenet_map import intent_of_class
from .models import imagenet_class_names
from .pipeline import EncodingCache, Pipeline
from .store import CatalogueStore, ImageRecord, ProductRecord, WriteBatch

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    rows: int = 0
    products: int = 0
    images_added: int = 0
    images_replaced: int = 0
    images_unchanged: int = 0
    images_removed: int = 0
    products_written: int = 0
    categories_predicted: int = 0
    domains_inferred: int = 0
    #: Domains whose rank calibration was fitted anew after this run (shoplens.calibrate).
    calibrated: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    #: Rows naming the same product and image as an earlier row: merged into it (the earlier row is used).
    duplicates: list[dict[str, str]] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["timings_s"] = {k: round(v, 3) for k, v in self.timings_s.items()}
        return out

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings_s[stage] = self.timings_s.get(stage, 0.0) + seconds


@dataclass
class _Pending:
    """A listed image that must be decoded and embedded."""

    row: CatalogueRow
    data: bytes
    sha1: str
    replaces: tuple[int, str] | None  # (image_id, domain) of the stored version
    photo: Photo | None = None


def _read(row: CatalogueRow) -> tuple[bytes, str]:
    data = read_image_file(row.image)  # a regular file within the size limit, or BadImageError
    return data, hashlib.sha1(data).hexdigest()


def _group(rows: Iterable[CatalogueRow], report: IndexReport) -> OrderedDict[str, list[CatalogueRow]]:
    products: OrderedDict[str, list[CatalogueRow]] = OrderedDict()
    for row in rows:
        report.rows += 1
        if row.error:
            report.failed.append({"origin": row.origin, "product_id": row.product_id, "image": row.image, "error": row.error})
            continue
        listed = products.setdefault(row.product_id, [])
        first = next((r for r in listed if r.image == row.image), None)
        if first is None:
            listed.append(row)
            continue
        same = (row.title, row.category, row.domain, row.metadata) == (first.title, first.category, first.domain, first.metadata)
        cells = "identical" if same else "different (ignored)"
        report.duplicates.append({"origin": row.origin, "product_id": row.product_id, "image": row.image,
                                  "duplicate_of": first.origin, "cells": cells})
        log.info("%s: product %r lists image %s again (as %s; cells %s): merged", row.origin, row.product_id, row.image, first.origin, cells)
    report.products = len(products)
    return products


def _chunks(products: OrderedDict[str, list[CatalogueRow]], size: int) -> Iterator[list[tuple[str, list[CatalogueRow]]]]:
    chunk: list[tuple[str, list[CatalogueRow]]] = []
    n = 0
    for pid, rows in products.items():
        chunk.append((pid, rows))
        n += len(rows)
        if n >= size:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


class Indexer:
    """Runs the indexing pipeline of one catalogue into one store."""

    def __init__(self, pipeline: Pipeline, store: CatalogueStore, *, chunk_size: int = 64, workers: int = 2) -> None:
        self.pipeline = pipeline
        self.store = store
        self.chunk_size = chunk_size
        self.workers = workers
        self._names = imagenet_class_names()

    def run(self, rows: Iterable[CatalogueRow], *, progress: bool = False, persist: bool = True) -> IndexReport:
        """Index ``rows``; ``persist=False`` leaves saving the indexes to the caller
        (each chunk is durable in SQLite anyway; the server saves them now and then)."""
        report = IndexReport()
        t0 = time.perf_counter()
        products = _group(rows, report)
        report.add_time("read", time.perf_counter() - t0)
        total = sum(len(r) for r in products.values())
        bar = tqdm(total=total, unit="img", desc="indexing", disable=not progress, leave=False)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="shoplens-decode") as pool:
            chunks = list(_chunks(products, self.chunk_size))
            # Prefetch: the next chunk is read and decoded while this one is embedded. The first
            # chunk is prepared here, so that both workers decode it: nothing runs beside it.
            prepared: Future[list[_Product]] | None = None
            for i in range(len(chunks)):
                plan = prepared.result() if prepared is not None else self._prepare(chunks[i], report, pool)
                prepared = pool.submit(self._prepare, chunks[i + 1], report, pool) if i + 1 < len(chunks) else None
                self._embed_and_write(plan, report)
                bar.update(sum(len(rows) for _, rows in chunks[i]))
        bar.close()
        if persist:
            self.store.persist()
        report.add_time("total", time.perf_counter() - t0)
        return report

    # -- read + decode ------------------------------------------------------
    def _prepare(self, chunk: Sequence[tuple[str, list[CatalogueRow]]], report: IndexReport, pool: ThreadPoolExecutor) -> list[_Product]:
        t0 = time.perf_counter()
        db = self.store
        plan: list[_Product] = []
        for pid, rows in chunk:
            item = _Product(pid, rows, db.get_product(pid))
            listed = {r.image for r in rows}
            want = item.explicit_domain or (item.stored.domain if item.stored else None)
            for row in rows:
                try:
                    data, sha1 = _read(row)
                except BadImageError as err:
                    report.failed.append(_failure(row, f"cannot read image: {err}"))
                    continue
                existing = db.find_image(pid, row.image)
                if existing is not None:
                    image_id, old_sha1, signature, old_domain = existing
                    if old_sha1 == sha1 and old_domain == want and signature == self.pipeline.embedders[old_domain].signature:
                        item.unchanged.append(image_id)
                        continue
                item.pending.append(_Pending(row, data, sha1, None if existing is None else (existing[0], existing[3])))
            item.stale = [(i, d) for i, d, src in db.product_images(pid) if src not in listed]
            plan.append(item)
        report.add_time("read", time.perf_counter() - t0)

        t0 = time.perf_counter()
        todo = [p for item in plan for p in item.pending]
        for p, result in zip(todo, decode_all([(p.data, p.row.image) for p in todo], pool, self.pipeline.decode_size)):
            if isinstance(result, BadImageError):
                report.failed.append(_failure(p.row, str(result)))
            else:
                p.photo = result
        report.add_time("decode", time.perf_counter() - t0)
        return plan

    # -- embed + write ------------------------------------------------------
    def _embed_and_write(self, plan: list[_Product], report: IndexReport) -> None:
        t0 = time.perf_counter()
        for item in plan:
            item.pending = [p for p in item.pending if p.photo is not None]
        photos = [p.photo for item in plan for p in item.pending]
        cache = EncodingCache(self.pipeline, photos)  # type: ignore[arg-type]
        index_of = {id(p): i for i, p in enumerate(photos)}
        need_intent = any(item.pending and (item.domain is None or item.category is None) for item in plan)
        probs = self.pipeline.classify(cache) if need_intent else None
        logits = self._logits(cache) if need_intent else None

        batch = WriteBatch()
        per_domain: dict[str, list[tuple[int, _Pending, str]]] = {d: [] for d in DOMAINS}
        for item in plan:
            if not item.pending and not item.unchanged:
                continue  # nothing usable for this product: keep what is stored
            first = index_of[id(item.pending[0].photo)] if item.pending else None
            domain, domain_source = item.domain, item.domain_source
            if domain is None:
                assert probs is not None and first is not None
                domain, domain_source = DOMAINS[int(np.argmax(probs[first][: len(DOMAINS)]))], "inferred"
                report.domains_inferred += 1
            category, category_source = item.category, item.category_source
            if category is None and first is not None and logits is not None:
                category, category_source = self._predict_category(logits[first], domain), "predicted"
                report.categories_predicted += 1
            record = ProductRecord(item.pid, item.title, category, category_source, domain, domain_source, item.metadata)
            if record != item.stored:
                batch.products.append(record)
            report.images_unchanged += len(item.unchanged)
            for p in item.pending:
                if p.replaces is not None:
                    batch.remove_images.append(p.replaces)
                    report.images_replaced += 1
                else:
                    report.images_added += 1
                per_domain[domain].append((index_of[id(p.photo)], p, item.pid))
            batch.remove_images.extend(item.stale)
            report.images_removed += len(item.stale)
        for domain, items in per_domain.items():
            if not items:
                continue
            emb = self.pipeline.embedders[domain]
            raw = self.pipeline.describe(domain, cache.subset([i for i, _, _ in items]))
            for (_, p, pid), vec in zip(items, raw):
                batch.add_images.append(ImageRecord(pid, p.row.image, p.sha1, domain, emb.signature, vec))
        report.add_time("embed", time.perf_counter() - t0)

        t0 = time.perf_counter()
        self.store.write(batch)
        # Acknowledged: every product of this chunk is durably stored, with all its listed images.
        done = [item.pid for item in plan if item.pending or item.unchanged]
        log.info("committed %d product(s), %d image(s): %s", len(done), len(batch.add_images), " ".join(done))
        report.products_written += len(batch.products)
        report.add_time("write", time.perf_counter() - t0)

    def _logits(self, cache: EncodingCache) -> np.ndarray | None:
        clf = self.pipeline.intent_classifier
        encodings = cache.get(clf.backbone, clf.input_size)
        if not encodings or encodings[0].logits is None:
            return None
        return np.stack([e.logits.numpy() for e in encodings])  # type: ignore[union-attr]

    def _predict_category(self, logits: np.ndarray, domain: str) -> str:
        """The most likely ImageNet class among those of the product's domain."""
        mask = intent_of_class() == INTENTS.index(domain)
        return self._names[int(np.argmax(np.where(mask, logits, -np.inf)))]


@dataclass
class _Product:
    """One listed product: what is stored, what the catalogue says, what must be embedded."""

    pid: str
    rows: list[CatalogueRow]
    stored: ProductRecord | None
    pending: list[_Pending] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    stale: list[tuple[int, str]] = field(default_factory=list)

    @property
    def explicit_domain(self) -> str | None:
        return next((r.domain for r in self.rows if r.domain), None)

    @property
    def domain(self) -> str | None:
        """The catalogue's domain, else the stored one, else None (to infer)."""
        return self.explicit_domain or (self.stored.domain if self.stored else None)

    @property
    def domain_source(self) -> str:
        if self.explicit_domain or self.stored is None:
            return "catalogue"
        return self.stored.domain_source

    @property
    def category(self) -> str | None:
        explicit = next((r.category for r in self.rows if r.category), None)
        if explicit:
            return explicit
        if self.stored is not None and self.stored.category_source == "predicted":
            return self.stored.category  # keep a prediction stable across re-runs
        return None

    @property
    def category_source(self) -> str:
        explicit = any(r.category for r in self.rows)
        return "catalogue" if explicit or self.category is None else "predicted"

    @property
    def title(self) -> str | None:
        return next((r.title for r in reversed(self.rows) if r.title), None)

    @property
    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in self.rows:
            out.update(r.metadata)
        return out


def decode_all(items: Sequence[tuple[ImageSource, str]], pool: Executor, target_size: int | None) -> list[Photo | BadImageError]:
    """Decode ``(bytes or path, name)`` items on ``pool``, in parallel; results in the items' order.

    An image that cannot be decoded gives its :class:`BadImageError` in its
    place; the others are unaffected.
    """

    def one(item: tuple[ImageSource, str]) -> Photo | BadImageError:
        try:
            return load_image(item[0], name=item[1], target_size=target_size)
        except BadImageError as err:
            return err

    return list(pool.map(one, items))


def _failure(row: CatalogueRow, error: str) -> dict[str, str]:
    return {"origin": row.origin, "product_id": row.product_id, "image": row.image, "error": error}
