"""The indexing pipeline: read → decode → embed → write, each stage timed.

A catalogue (CSV or folder) describes products; each product listed gets
exactly the images listed for it. Images whose file content and recognition
model are unchanged are not decoded or embedded again, so re-running the same
catalogue changes nothing. Each chunk of products is written in one
transaction: a crash loses at most the chunk being written, never half of it.
A row that cannot be used (missing file, corrupt image, bad id) is reported and
the others go on.

A product whose domain neither the catalogue nor the store gives is inferred:
the products of one catalogue category (a folder catalogue's category folder)
all go where the majority of their photos' predicted intents say, so that one
category never straddles both partitions (an apparel search never reads
``other_product``). Each product is first written where its own photo points;
once the whole catalogue is read, those outvoted in their category are moved.
A product without a category keeps its own prediction.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from ..catalog import CatalogueRow
from ..config import DOMAINS
from ..errors import BadImageError
from ..imaging import ImageSource, Photo, decode_batches, decode_many, read_image_file
from ..intent import predict_category
from ..local.features import LocalFeatures
from ..store import CatalogueStore, ImageRecord, ProductRecord, WriteBatch
from .search import EncodingCache, Pipeline

log = logging.getLogger(__name__)

#: The domain whose photos have local features (``shoplens.local``).
LOCAL_DOMAIN = "other_product"
#: A category's vote for its domain counts this many votes more, spread as the whole run's votes are: a
#: category of one or two products whose photos look like the other domain's (asparagus, leek: "apparel")
#: follows the catalogue; one with a few clear votes keeps them (a hat alone in a clothing shop stays apparel).
PRIOR_VOTES = 2.0
#: Extracted local features are added to the local index in batches of at least this many (one segment each).
LOCAL_ADD_BATCH = 256


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
    #: Products moved to their category's majority domain (or by a new intent classifier).
    domains_reassigned: int = 0
    #: Per catalogue category whose products' domain was inferred: the votes and the domain chosen.
    domains_by_category: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Domains whose rank calibration was fitted anew after this run (shoplens.pipeline.calibrate).
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
        #: The local-feature stage this run feeds: each new other_product photo's SIFT features are
        #: extracted from the pixels decoded for the backbone (the stage's sync would read them again).
        local = pipeline.local
        self._local = local if pipeline.config.local.enabled and local is not None and not local.read_only else None
        #: Decoded for the backbone and, where on, for the local features (their catalogue side).
        self._decode_size = max(pipeline.decode_size, self._local.catalogue_side if self._local is not None else 0)
        self._local_ready: list[tuple[int, LocalFeatures]] = []
        #: Domains decided for products whatever the stored one (a category's majority).
        self._assigned: dict[str, str] = {}
        #: Per product whose domain is inferred, this run: (category, domain now, vote weights).
        self._votes: dict[str, tuple[str, str, np.ndarray]] = {}

    def run(self, rows: Iterable[CatalogueRow], *, progress: bool = False, persist: bool = True,
            on_progress: Callable[[int, int], None] | None = None) -> IndexReport:
        """Index ``rows``; ``persist=False`` leaves saving the indexes to the caller
        (each chunk is durable in SQLite anyway; the server saves them now and then).
        ``on_progress(done, total)`` is called as each chunk of images is written (``POST /imports`` reports it)."""
        report = IndexReport()
        t0 = time.perf_counter()
        products = _group(rows, report)
        report.add_time("read", time.perf_counter() - t0)
        self._votes = {}
        self._write_all(products, report, progress=progress, desc="indexing", on_progress=on_progress)
        moves = self._majorities(report)
        if moves:
            self._move(OrderedDict((pid, products[pid]) for pid in moves), moves, report, progress=progress)
        if persist:
            t1 = time.perf_counter()
            self.store.persist()
            report.add_time("persist", time.perf_counter() - t1)
        report.add_time("total", time.perf_counter() - t0)
        return report

    def _write_all(self, products: OrderedDict[str, list[CatalogueRow]], report: IndexReport, *, progress: bool, desc: str,
                   on_progress: Callable[[int, int], None] | None = None) -> None:
        total = sum(len(r) for r in products.values())
        done = 0
        if on_progress is not None:
            on_progress(done, total)
        bar = tqdm(total=total, unit="img", desc=desc, disable=not progress, leave=False)
        with (ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="shoplens-decode") as pool,
              ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="shoplens-sift") as sift):
            chunks = list(_chunks(products, self.chunk_size))
            # Prefetch: the next chunk is read and decoded while this one is embedded. The first
            # chunk is prepared here, so that both workers decode it: nothing runs beside it.
            prepared: Future[list[_Product]] | None = None
            for i in range(len(chunks)):
                plan = prepared.result() if prepared is not None else self._prepare(chunks[i], report, pool)
                prepared = pool.submit(self._prepare, chunks[i + 1], report, pool) if i + 1 < len(chunks) else None
                self._embed_and_write(plan, report, sift)
                bar.update(n := sum(len(rows) for _, rows in chunks[i]))
                done += n
                if on_progress is not None:
                    on_progress(done, total)
        self._flush_local(report, at_least=1)
        bar.close()

    def _flush_local(self, report: IndexReport, *, at_least: int = LOCAL_ADD_BATCH) -> None:
        """Add the extracted local features to the local index, in batches of at least ``at_least``."""
        if self._local is None or len(self._local_ready) < at_least:
            return
        t0 = time.perf_counter()
        ready, self._local_ready = self._local_ready, []
        self._local.add([i for i, _ in ready], [p for _, p in ready])
        report.add_time("local_features", time.perf_counter() - t0)

    # -- domains ------------------------------------------------------------
    def _majorities(self, report: IndexReport) -> dict[str, str]:
        """Each voting category's majority domain (``report.domains_by_category``); the products it moves."""
        by_category: dict[str, list[str]] = {}
        for pid, (category, _, _) in self._votes.items():
            by_category.setdefault(category, []).append(pid)
        moves: dict[str, str] = {}
        if not by_category:
            return moves
        # The whole run's votes, spread as PRIOR_VOTES votes over each category's own.
        every = np.stack([v[2] for v in self._votes.values()])
        prior = PRIOR_VOTES * np.bincount(every.argmax(1), minlength=len(DOMAINS)) / len(every)
        for category, pids in by_category.items():
            weights = np.stack([self._votes[p][2] for p in pids])
            domain = majority(weights, prior)
            counts = np.bincount(weights.argmax(1), minlength=len(DOMAINS))
            report.domains_by_category[category] = {"domain": domain, **{d: int(n) for d, n in zip(DOMAINS, counts)}}
            moves.update({p: domain for p in pids if self._votes[p][1] != domain})
        return moves

    def _move(self, products: OrderedDict[str, list[CatalogueRow]], moves: dict[str, str], report: IndexReport, *, progress: bool) -> None:
        """Write ``products`` again, each in the domain ``moves`` gives it (their images re-embedded there)."""
        moved = IndexReport()
        self._assigned, self._votes = moves, {}
        try:
            self._write_all(products, moved, progress=progress, desc="moving")
        finally:
            self._assigned = {}
        report.domains_reassigned += sum(1 for pid, domain in moves.items()
                                         if (rec := self.store.get_product(pid)) is not None and rec.domain == domain)
        report.failed.extend(moved.failed)
        for stage, seconds in moved.timings_s.items():
            report.add_time(stage, seconds)

    def reassign(self, *, progress: bool = False, batch: int = 32) -> IndexReport:
        """Decide anew the domain of every stored product whose domain was inferred (a new intent classifier).

        Each such product's first photo is read again from its source and
        classified; a catalogue category goes where the majority of its
        products' photos point, a product without one where its own photo
        does; products whose domain changes are moved (their photos
        re-embedded in the new domain). A product whose photo cannot be read
        again stays where it is (reported in ``failed``).
        """
        report = IndexReport()
        t0 = time.perf_counter()
        todo: list[tuple[ProductRecord, str]] = []
        for rec in self.store.iter_products():
            if rec.domain_source == "inferred":
                images = self.store.product_images(rec.product_id)
                if images:
                    todo.append((rec, images[0][2]))
        weights: dict[str, np.ndarray] = {}
        batches = decode_batches(todo, batch, lambda item: item[1], name=lambda item: item[1],
                                 target_size=self.pipeline.decode_size, workers=self.workers)
        for part, decoded in tqdm(batches, total=-(-len(todo) // batch), desc="classifying", disable=not progress, leave=False):
            ok = [(rec, photo) for (rec, _), photo in zip(part, decoded) if not isinstance(photo, BadImageError)]
            for (rec, source), photo in zip(part, decoded):
                if isinstance(photo, BadImageError):
                    report.failed.append({"origin": source, "product_id": rec.product_id, "image": source, "error": str(photo)})
            if ok:
                probs = self.pipeline.classify(EncodingCache(self.pipeline, [photo for _, photo in ok]))
                weights.update({rec.product_id: vote_weights(pr) for (rec, _), pr in zip(ok, probs)})
        records = {rec.product_id: rec for rec, _ in todo}
        self._votes = {pid: (_vote_group(records[pid]) or f"\0{pid}", records[pid].domain, w) for pid, w in weights.items()}
        moves = self._majorities(report)
        report.domains_by_category = {c: v for c, v in report.domains_by_category.items() if not c.startswith("\0")}
        report.add_time("classify", time.perf_counter() - t0)
        if moves:
            rows: OrderedDict[str, list[CatalogueRow]] = OrderedDict()
            for pid in moves:
                rec = records[pid]
                category = rec.category if rec.category_source == "catalogue" else None
                rows[pid] = [CatalogueRow(pid, source, rec.title, category, None, dict(rec.metadata), origin=source)
                             for _, _, source in self.store.product_images(pid)]
            self._move(rows, moves, report, progress=progress)
            self.store.persist()
        report.products = len(todo)
        report.add_time("total", time.perf_counter() - t0)
        return report

    # -- read + decode ------------------------------------------------------
    def _prepare(self, chunk: Sequence[tuple[str, list[CatalogueRow]]], report: IndexReport, pool: ThreadPoolExecutor) -> list[_Product]:
        t0 = time.perf_counter()
        db = self.store
        plan: list[_Product] = []
        for pid, rows in chunk:
            item = _Product(pid, rows, db.get_product(pid), assigned=self._assigned.get(pid))
            listed = {r.image for r in rows}
            want = item.domain
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
        for p, result in zip(todo, decode_all([(p.data, p.row.image) for p in todo], pool, self._decode_size)):
            if isinstance(result, BadImageError):
                report.failed.append(_failure(p.row, str(result)))
            else:
                p.photo = result
        report.add_time("decode", time.perf_counter() - t0)
        return plan

    # -- embed + write ------------------------------------------------------
    def _embed_and_write(self, plan: list[_Product], report: IndexReport, sift: Executor) -> None:
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
            group = _vote_group(item) if domain_source == "inferred" and not self._assigned else None
            if group is not None:
                if item.domain is None:  # inferred now, from the product's first photo
                    assert probs is not None and first is not None
                    weights = vote_weights(probs[first])
                else:  # inferred at an earlier run: it votes for where it is
                    weights = np.eye(len(DOMAINS), dtype=np.float32)[DOMAINS.index(domain)]
                self._votes[item.pid] = (group, domain, weights)
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
        new_ids = self.store.write(batch)
        # Acknowledged: every product of this chunk is durably stored, with all its listed images.
        done = [item.pid for item in plan if item.pending or item.unchanged]
        log.info("committed %d product(s), %d image(s): %s", len(done), len(batch.add_images), " ".join(done))
        report.products_written += len(batch.products)
        report.add_time("write", time.perf_counter() - t0)
        if self._local is not None and per_domain[LOCAL_DOMAIN]:
            stored = [i for i, im in zip(new_ids, batch.add_images) if im.domain == LOCAL_DOMAIN]
            self._extract_local(stored, [p.photo for _, p, _ in per_domain[LOCAL_DOMAIN]], report, sift)  # type: ignore[misc]

    def _extract_local(self, image_ids: list[int], photos: list[Photo], report: IndexReport, sift: Executor) -> None:
        """The local features of the stored images ``image_ids``, from their photos as decoded for the backbone.

        Extracted after the backbone's passes, not beside them: both use
        every core, and OpenVINO's passes slow down far more than the
        overlap gains when SIFT competes with them. A photo whose features
        cannot be made now is left to the stage's ``sync``, which reads it
        again from its source (and skips it if that fails too).
        """
        t0 = time.perf_counter()

        def one(photo: Photo) -> LocalFeatures | Exception:
            try:
                return self._local.extract(photo)  # type: ignore[union-attr]
            except Exception as err:  # noqa: BLE001 - an OpenCV failure on one photo must not lose the chunk's others
                return err

        for image_id, feats in zip(image_ids, sift.map(one, photos)):
            if isinstance(feats, Exception):
                log.warning("local features of image %d not made now (%s): made from its source at the end", image_id, feats)
            else:
                self._local_ready.append((image_id, feats))
        report.add_time("local_features", time.perf_counter() - t0)
        self._flush_local(report)

    def _logits(self, cache: EncodingCache) -> np.ndarray | None:
        clf = self.pipeline.intent_classifier
        encodings = cache.get(clf.backbone, clf.input_size)
        if not encodings or encodings[0].logits is None:
            return None
        return np.stack([e.logits.numpy() for e in encodings])  # type: ignore[union-attr]

    def _predict_category(self, logits: np.ndarray, domain: str) -> str:
        """The most likely ImageNet class among those of the product's domain (:func:`shoplens.intent.predict_category`)."""
        return predict_category(logits, domain)


@dataclass
class _Product:
    """One listed product: what is stored, what the catalogue says, what must be embedded."""

    pid: str
    rows: list[CatalogueRow]
    stored: ProductRecord | None
    pending: list[_Pending] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    stale: list[tuple[int, str]] = field(default_factory=list)
    #: The domain decided for it by its category's majority (or a new intent classifier).
    assigned: str | None = None

    @property
    def explicit_domain(self) -> str | None:
        return next((r.domain for r in self.rows if r.domain), None)

    @property
    def domain(self) -> str | None:
        """The catalogue's domain, else the one assigned, else the stored one, else None (to infer)."""
        return self.explicit_domain or self.assigned or (self.stored.domain if self.stored else None)

    @property
    def domain_source(self) -> str:
        if self.explicit_domain:
            return "catalogue"
        if self.assigned:
            return "inferred"
        if self.stored is None:
            return "catalogue"  # not used: a product with no domain is inferred
        return self.stored.domain_source

    @property
    def category(self) -> str | None:
        explicit = next((r.category for r in self.rows if r.category), None)
        if explicit:
            return explicit
        stored = self.stored
        if stored is not None and stored.category_source == "predicted" and self.domain == stored.domain:
            return stored.category  # keep a prediction stable across re-runs (a new domain needs a new one)
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


def vote_weights(probs: np.ndarray) -> np.ndarray:
    """A photo's vote for a product domain: its intent scores over the product domains, summing to 1."""
    p = np.asarray(probs[: len(DOMAINS)], dtype=np.float32)
    return p / p.sum() if p.sum() > 0 else np.full(len(DOMAINS), 1.0 / len(DOMAINS), np.float32)


def majority(weights: np.ndarray, prior: np.ndarray | None = None) -> str:
    """The domain most of ``weights``' rows (votes) prefer, with ``prior`` votes per domain added; a tie goes to the larger summed score."""
    counts = np.bincount(weights.argmax(1), minlength=len(DOMAINS)).astype(np.float64)
    if prior is not None:
        counts += prior
    best = np.flatnonzero(np.isclose(counts, counts.max()))
    return DOMAINS[int(best[np.argmax(weights.sum(0)[best])])]


def _vote_group(item: _Product | ProductRecord) -> str | None:
    """The catalogue category a product votes in for its domain; ``None``: it decides alone."""
    return item.category if item.category_source == "catalogue" and item.category else None


def decode_all(items: Sequence[tuple[ImageSource, str]], pool: Executor, target_size: int | None) -> list[Photo | BadImageError]:
    """Decode ``(bytes or path, name)`` items on ``pool`` (:func:`shoplens.imaging.decode_many`); results in the items' order."""
    return decode_many([source for source, _ in items], names=[name for _, name in items], target_size=target_size, pool=pool)


def _failure(row: CatalogueRow, error: str) -> dict[str, str]:
    return {"origin": row.origin, "product_id": row.product_id, "image": row.image, "error": error}
