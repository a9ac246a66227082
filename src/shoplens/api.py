"""The Python API: a store and the pipeline that indexes and searches it.

>>> from shoplens import Shoplens
>>> with Shoplens("my-store") as lens:
...     lens.index("catalog.csv")
...     result = lens.search_one("photo.jpg")

The CLI and the HTTP server are thin layers over this module.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from .catalog import CatalogueRow, check_domain, read_catalogue, validate_row, with_default_domain
from .config import DOMAINS, INTENTS, Config, load_store_config, resolve_config
from .errors import BadImageError, CatalogueError, ConfigError, NotFoundError, ShoplensError, StoreError
from .filters import FilterLike, parse_filters
from .imaging import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    Box,
    BoxLike,
    ImageSource,
    Photo,
    box_as_given,
    crop_to_box,
    load_image,
    parse_box,
    photo_from_array,
    read_image_file,
)
from .local.stage import LocalStage
from .models import pick_device
from .models.text import check_text, has_text_tower
from .pipeline import EncodingCache, Pipeline
from .pipeline.indexing import Indexer
from .pipeline.indexing import IndexReport as IndexReport  # re-exported: what index() and put_products() return
from .pipeline.text_search import search_text
from .results import DetectResult, ErrorResult, GarmentResult, IntentResult, SearchResult, TextSearchResult
from .store import CatalogueStore, ProductRecord, StoredImage, WriteBatch, open_catalogue_store
from .store.artifacts import write_atomic
from .store.migrate import MigrationReport, copy_catalogue, copy_files

log = logging.getLogger(__name__)

#: Photos added through the API, content-addressed: ``<store>/photos/ab/ab12….jpg``.
PHOTOS_DIR = "photos"
R = TypeVar("R")
Allowed = Callable[[str], "np.ndarray | None"]
_KEEP: Any = object()


@dataclass(frozen=True)
class ProductInput:
    """A product to add or replace: its photos (encoded bytes or paths) and its fields."""

    product_id: str
    photos: Sequence[bytes | str | Path]
    title: str | None = None
    category: str | None = None
    domain: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
#: A photo kept under ``<store>/photos/``: its content's SHA-1 and a suffix; and one being written.
_PHOTO_FILE = re.compile(r"[0-9a-f]{40}\.[a-z]+")
_PHOTO_TMP = re.compile(r"\.[0-9a-f]{40}\.\d+\.\d+\.tmp")


def _check_photo(data: bytes, *, name: str, max_bytes: int, max_pixels: int) -> str:
    """Decode ``data`` as a search would (a :class:`BadImageError` if it cannot be used); its file suffix."""
    load_image(data, name=name, max_bytes=max_bytes, max_pixels=max_pixels, target_size=224)
    with Image.open(io.BytesIO(data)) as img:
        return _SUFFIXES.get(img.format or "", ".img")


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as err:
        log.warning("cannot remove %s: %s", path, err.strerror or err)
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _name(source: ImageSource, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or f"<image {index}>"


def _each(
    images: Sequence[ImageSource],
    fn: Callable[[Photo, float], R],
    *,
    target_size: int | None,
    preview: Callable[[int, int], tuple[int, int]] | None = None,
) -> list[R | ErrorResult]:
    """Decode each image (see :func:`load_image`) and run ``fn``; an unreadable image gives an ErrorResult, the others go on."""
    out: list[R | ErrorResult] = []
    for i, source in enumerate(images):
        name = _name(source, i)
        start = time.perf_counter()
        try:
            photo = load_image(source, name=name, target_size=target_size, preview=preview)
            out.append(fn(photo, (time.perf_counter() - start) * 1000.0))
        except BadImageError as err:  # fn may decode a preview in full
            out.append(ErrorResult(image=name, error=str(err)))
    return out


def classify_photos(pipeline: Pipeline, images: Sequence[ImageSource]) -> list[IntentResult | ErrorResult]:
    _ = pipeline.intent_classifier  # a bad configuration fails before any image is read

    def one(photo: Photo, _ms: float) -> IntentResult:
        probs = pipeline.classify(EncodingCache(pipeline, [photo]))[0]
        return IntentResult(
            image=photo.name,
            intent=pipeline.intent_of(probs),
            intent_scores={k: round(float(v), 4) for k, v in zip(INTENTS, probs)},
        )

    return _each(images, one, target_size=None, preview=pipeline.gate_size)  # the gate alone: never decoded in full


def detect_photos(pipeline: Pipeline, images: Sequence[ImageSource]) -> list[DetectResult | ErrorResult]:
    _ = pipeline.detector  # a bad configuration fails before any image is read

    def one(photo: Photo, _ms: float) -> DetectResult:
        garments = pipeline.detect(EncodingCache(pipeline, [photo]))[0]
        return DetectResult(image=photo.name, garments=[GarmentResult(**g.to_dict()) for g in garments])  # type: ignore[arg-type]

    return _each(images, one, target_size=pipeline.detector.input_size or pipeline.decode_size)


def classify(images: Sequence[ImageSource], config: Config | None = None) -> list[IntentResult | ErrorResult]:
    """Intent of each image, without any store (``shoplens classify``)."""
    return classify_photos(Pipeline(config), images)


def detect(images: Sequence[ImageSource], config: Config | None = None) -> list[DetectResult | ErrorResult]:
    """Garments in each image, without any store (``shoplens detect``)."""
    return detect_photos(Pipeline(config), images)


def _open(location: str | Path, create: bool, engine: str, read_only: bool) -> CatalogueStore:
    store = open_catalogue_store(location, create=create, read_only=read_only)
    if engine not in ("auto", store.engine):
        store.close()
        raise StoreError(f"{location}: a {store.engine} store, but the configuration asks for store.engine={engine!r}")
    return store


class Shoplens:
    """A catalogue store (``--store DIR`` or a Milvus location) with its pipeline.

    ``store``: a folder (the embedded engine), ``milvus://HOST:PORT/NAME`` or
    ``milvus-lite:PATH.db[#NAME]`` (see :func:`shoplens.store.open_catalogue_store`).

    Configuration layers: defaults < the configuration saved in the store <
    ``config_file`` < ``flags`` (dotted names, e.g. ``**{"search.min_rank": 1.2}``).

    One writer per store: by default the store is opened for writing and, for
    the embedded engine, its writer lock is held until :meth:`close`; opening
    a store that another writer (a ``shoplens serve``, a ``shoplens index``)
    holds raises :class:`~shoplens.errors.StoreBusyError` at once.
    ``read_only=True`` opens an existing store to search and read it beside
    its writer: no lock, nothing written (not even at close), and searches
    see what the writer has committed; the write methods raise
    :class:`~shoplens.errors.StoreError`.

    ``search_concurrency``: how many searches the caller runs at once (a
    server's search slots); with ``runtime.streams`` 0 the OpenVINO backbones
    run that many passes side by side, on a share of the cores each.

    ``defer_calibration``: writes that make a rank-filter refit due
    (:mod:`shoplens.pipeline.calibrate`) only set :attr:`calibration_due`,
    and the caller runs :meth:`refresh_calibrations` in its own background
    work, so that no write waits seconds for a refit (``shoplens serve``).
    """

    def __init__(
        self,
        store: str | Path,
        *,
        config: Config | None = None,
        config_file: str | Path | None = None,
        create: bool = True,
        read_only: bool = False,
        device: str = "cpu",
        search_concurrency: int = 1,
        defer_calibration: bool = False,
        **flags: Any,
    ) -> None:
        requested = resolve_config(config_file, base=config, **flags)
        device = pick_device(device)  # before the store is opened: a bad device makes nothing
        self.read_only = read_only
        self.defer_calibration = defer_calibration
        #: Set (with ``defer_calibration``) by a write after which a refit is due; cleared by whoever runs it.
        self.calibration_due = threading.Event()
        self.store = _open(store, create and not read_only, requested.store.engine, read_only)
        # Catalogue writes are read-check-write (what is stored decides what to embed): one at a time.
        self._write_lock = threading.RLock()
        try:
            base = config
            saved = self.store.artifacts.config()
            if base is None and saved.exists():
                base = load_store_config(saved)
            self.config = resolve_config(config_file, base=base, **flags)
            self.pipeline = Pipeline(self.config, self.store.artifacts, device=device, search_concurrency=search_concurrency)
            self.store.attach(self.pipeline, index=self.config.store.index)
            if self.config.local.enabled:
                # Brought in step with the store now: a crash after a store commit left it behind at worst.
                self.pipeline.local = LocalStage(self.store.artifacts.local_index(), self.config.local, read_only=read_only)
                self._sync_local()
            if self.store.exclusive:
                # Photos a crash left behind: written for a write that never committed, or of a
                # committed delete whose files were not removed yet. Only the one writer may judge.
                self._collect_photos()
        except BaseException:
            self.store.close()  # a writer lets the next one in
            raise

    # -- lifecycle ----------------------------------------------------------
    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Shoplens:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def warm_up(self) -> None:
        """Load the models and the vector indexes now, so that the first search is not slow (``shoplens serve`` does at start)."""
        self.store.warm_up()
        photo = photo_from_array(np.full((64, 64, 3), 128, dtype=np.uint8), name="warm-up")
        cache = EncodingCache(self.pipeline, [photo])
        self.pipeline.classify(cache)
        _ = self.pipeline.detector
        for domain in DOMAINS:
            self.pipeline.describe(domain, cache)
        for domain in self.text_domains():
            self.pipeline.text_model(domain)

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.store.location}: opened read-only: open it without read_only=True to write "
                             "(while a server runs, add products through its HTTP API)")

    def _save_config(self) -> None:
        write_atomic(self.store.artifacts.config(), (json.dumps(self.config.to_dict(), indent=2) + "\n").encode("utf-8"))

    # -- catalogue ----------------------------------------------------------
    def index(
        self, catalogue: str | Path | Iterable[CatalogueRow], *, domain: str | None = None, progress: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> IndexReport:
        """Add or update the products of a catalogue CSV, folder or rows.

        Each product listed gets exactly the images listed for it; unchanged
        images are not embedded again. ``domain`` (``apparel`` /
        ``other_product``) is the domain of every row that names none; without
        it, such a product's domain is inferred: a category's products all go
        where the majority of their photos' predicted intents point.
        ``on_progress(done, total)``: images written so far, of those to index,
        called as each chunk is written.
        """
        self._check_writable()
        start = time.perf_counter()
        check_domain(domain)
        if isinstance(catalogue, (str, os.PathLike)):
            rows: Iterable[CatalogueRow] = read_catalogue(catalogue, domain=domain)
        else:
            rows = catalogue if domain is None else with_default_domain(catalogue, domain)
        with self._write_lock:
            report = Indexer(self.pipeline, self.store).run(rows, progress=progress, on_progress=on_progress)
            t0 = time.perf_counter()
            self._sync_local(progress=progress)
            report.add_time("local_sync", time.perf_counter() - t0)
            self._calibrate(report)
            self._save_config()
        report.timings_s["total"] = time.perf_counter() - start  # the whole call: local features and calibration too
        return report

    def _calibrate(self, report: IndexReport | None = None) -> None:
        """Fit the rank filter's calibration anew where the catalogue changed enough (shoplens.pipeline.calibrate);
        with ``defer_calibration``, only say that a refit is due."""
        from .pipeline.calibrate import due

        if self.defer_calibration:
            if due(self.pipeline, self.store):
                self.calibration_due.set()
            return
        start = time.perf_counter()
        fitted = self.refresh_calibrations()
        if fitted and report is not None:
            report.add_time("calibrate", time.perf_counter() - start)
            report.calibrated = fitted

    def refresh_calibrations(self) -> list[str]:
        """Fit the rank filter's calibration anew for each domain whose catalogue changed enough since its fit.

        The fit reads the store beside searches and writes; only applying it
        takes the write lock. Returns the domains fitted.
        """
        from .pipeline.calibrate import refresh_calibrations

        self._check_writable()
        return sorted(refresh_calibrations(self.pipeline, self.store, lock=self._write_lock))

    def _sync_local(self, *, progress: bool = False) -> None:
        """Bring the local-feature index in step with the store (new images extracted, gone ones dropped)."""
        if self.pipeline.local is not None:
            with self._write_lock:
                self.pipeline.local.sync(self.store, progress=progress)

    def save_photo(self, data: bytes, *, name: str = "photo", max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS) -> Path:
        """Check that ``data`` is a usable image, then keep it under ``<store>/photos/``.

        The file is named by its content (SHA-1), written atomically and
        synced, so it exists before any product refers to it. A photo no
        stored image refers to is removed when the store is next opened for
        writing: :meth:`put_products` is the way to add one for good.
        """
        self._check_writable()
        suffix = _check_photo(data, name=name, max_bytes=max_bytes, max_pixels=max_pixels)
        with self._write_lock:
            return self._keep_photo(data, suffix)

    def _keep_photo(self, data: bytes, suffix: str) -> Path:
        """Write a checked photo under ``<store>/photos/`` (under the write lock: see :meth:`_collect_photos`)."""
        digest = hashlib.sha1(data).hexdigest()
        folder = self.store.root / PHOTOS_DIR / digest[:2]
        path = folder / f"{digest}{suffix}"
        if path.is_file() and path.stat().st_size == len(data):
            return path
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _fsync_dir(folder)
        return path

    def _photo_digests(self, product_ids: Iterable[str]) -> set[str]:
        """Content hashes of the products' photos kept under ``<store>/photos/``."""
        out: set[str] = set()
        for pid in product_ids:
            for _, _, source in self.store.product_images(pid):
                path = Path(source)
                if path.parent.parent.name == PHOTOS_DIR and _PHOTO_FILE.fullmatch(path.name):
                    out.add(path.name.split(".", 1)[0])
        return out

    def _collect_photos(self, digests: Iterable[str] | None = None) -> int:
        """Remove the photo files of ``digests`` (``None``: every file under ``<store>/photos/``) no stored image has.

        Called under the write lock, after the metadata change has committed
        (or failed): a photo is written under the same lock before the write
        that refers to it, so a file is never removed between the two. An
        image refers to its file by content (the SHA-1 the file is named by),
        whatever spelling of the store's path its source has. Returns how
        many files went.
        """
        root = self.store.root / PHOTOS_DIR
        if not root.is_dir():
            return 0
        files: dict[str, list[Path]] = {}
        if digests is None:
            for path in root.glob("*/*"):
                if _PHOTO_FILE.fullmatch(path.name):
                    files.setdefault(path.name.split(".", 1)[0], []).append(path)
                elif _PHOTO_TMP.fullmatch(path.name):
                    _unlink(path)  # an upload cut short by a crash (only the one writer writes here)
        else:
            for digest in set(digests):
                found = list((root / digest[:2]).glob(f"{digest}.*"))
                if found:
                    files[digest] = found
        if not files:
            return 0
        in_use = self.store.sha1s_in_use(sorted(files))
        removed = 0
        for digest, paths in files.items():
            if digest not in in_use:
                removed += sum(_unlink(p) for p in paths if _PHOTO_FILE.fullmatch(p.name))
        if removed:
            log.info("%s: removed %d photo file(s) no product refers to any more", root, removed)
        return removed

    def put_products(
        self, products: Sequence[ProductInput], *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> IndexReport:
        """Add or replace products, each with exactly the photos given, in one transaction.

        Every photo is checked first: a bad one raises :class:`BadImageError`
        (a bad id :class:`CatalogueError`) and nothing is written.
        """
        self._check_writable()
        checked: list[tuple[ProductInput, list[tuple[str, bytes, str]]]] = []
        seen: set[str] = set()
        for item in products:
            pid = item.product_id
            problem = validate_row(pid, "photo", item.domain)
            if problem:
                raise CatalogueError(f"product {pid!r}: {problem}")
            if pid in seen:
                raise CatalogueError(f"product {pid!r} is given twice")
            seen.add(pid)
            if not item.photos:
                raise CatalogueError(f"product {pid!r}: at least one photo is needed")
            photos = []
            for n, photo in enumerate(item.photos, 1):
                label = f"product {pid!r}, photo {n}"
                data = photo if isinstance(photo, bytes) else read_image_file(photo, max_bytes=max_bytes, name=label)
                photos.append((label, data, _check_photo(data, name=label, max_bytes=max_bytes, max_pixels=max_pixels)))
            checked.append((item, photos))
        # Every photo is usable: only now is a file written.
        with self._write_lock:
            digests = self._photo_digests(seen)  # the photos these products had: replaced ones may go
            try:
                rows: list[CatalogueRow] = []
                for item, photos in checked:
                    for label, data, suffix in photos:
                        path = self._keep_photo(data, suffix)
                        digests.add(path.name.split(".", 1)[0])
                        rows.append(CatalogueRow(item.product_id, str(path), item.title or None, item.category or None,
                                                 item.domain or None, dict(item.metadata), origin=label))
                # One chunk: the whole call is one store transaction, all or nothing.
                report = Indexer(self.pipeline, self.store, chunk_size=len(rows) + 1).run(rows, persist=False)
            finally:
                self._collect_photos(digests)  # committed or not, what no image refers to goes
            self._sync_local()
            self._calibrate(report)
            if not self.store.artifacts.config().exists():
                self._save_config()
        if report.failed:
            raise ShoplensError("; ".join(f"{f['origin']}: {f['error']}" for f in report.failed))
        return report

    def set_photos(self, product_id: str, photos: Sequence[bytes | str | Path], **limits: int) -> IndexReport:
        """Replace a product's photos, keeping its title, category and metadata."""
        self._check_writable()
        with self._write_lock:
            rec = self.get_product(product_id)
            item = ProductInput(
                product_id,
                photos,
                rec.title,
                rec.category if rec.category_source == "catalogue" else None,
                rec.domain if rec.domain_source == "catalogue" else None,
                rec.metadata,
            )
            return self.put_products([item], **limits)

    def update_product(
        self,
        product_id: str,
        *,
        title: str | None = _KEEP,
        category: str | None = _KEEP,
        metadata: Mapping[str, Any] | None = None,
        replace_metadata: bool = False,
    ) -> ProductRecord:
        """Change a product's title, category or metadata without touching its photos.

        ``metadata`` is merged key by key (a ``None`` value removes the key),
        or replaces the whole mapping with ``replace_metadata``.
        """
        self._check_writable()
        with self._write_lock:
            old = self.get_product(product_id)
            meta = {} if replace_metadata else dict(old.metadata)
            for key, value in (metadata or {}).items():
                if value is None:
                    meta.pop(key, None)
                else:
                    meta[key] = value
            new = ProductRecord(
                product_id,
                old.title if title is _KEEP else title,
                old.category if category is _KEEP else category,
                old.category_source if category is _KEEP else "catalogue",
                old.domain,
                old.domain_source,
                meta,
            )
            if new != old:
                self.store.write(WriteBatch(products=[new]))
            return new

    def delete_products(self, product_ids: Sequence[str]) -> int:
        """Delete products and their images; returns how many existed."""
        self._check_writable()
        with self._write_lock:
            existing = [p for p in dict.fromkeys(product_ids) if self.store.get_product(p) is not None]
            digests = self._photo_digests(existing)
            self.store.write(WriteBatch(delete_products=existing))
            self._collect_photos(digests)  # only once the delete has committed
            self._sync_local()
            self._calibrate()
        return len(existing)

    def product_images(self, product_id: str) -> list[StoredImage]:
        """A product's images (image_id, domain, source), by image id."""
        return self.store.product_images(product_id)

    def image_file(self, image_id: int) -> Path | None:
        """The file of a stored image, if it is still there."""
        source = self.store.image_source(image_id)
        if source is None:
            return None
        path = Path(source)
        return path if path.is_file() else None

    def get_product(self, product_id: str) -> ProductRecord:
        record = self.store.get_product(product_id)
        if record is None:
            raise NotFoundError(f"no product {product_id!r}")
        return record

    def list_products(self, offset: int = 0, limit: int = 100) -> list[ProductRecord]:
        return self.store.list_products(offset, limit)

    def count_products(self) -> int:
        return self.store.count_products()

    # -- training -----------------------------------------------------------
    def train_intent(self, labelled: str | Path, *, holdout: float = 0.2, seed: int = 0, progress: bool = False) -> Any:
        """Step 7 of docs/method.md: train the intent classifier from labelled folders or a CSV.

        Reports accuracy on a held-out part and saves the classifier in the
        store, which uses it from now on (``intent.classifier = auto``). The
        products whose domain was inferred are classified again with it, by
        category, and moved where it now points (``report.domains``).
        """
        from .intent.trained import train_intent

        self._check_writable()
        report = train_intent(
            labelled,
            self.store.artifacts.intent(),
            backbone=self.config.intent.backbone,
            holdout=holdout,
            seed=seed,
            progress=progress,
        )
        with self._write_lock:
            self.pipeline.reset_intent()
            # With the classifier the store's searches now use (the new one, unless the configuration names another).
            domains = Indexer(self.pipeline, self.store).reassign(progress=progress)
            if domains.domains_reassigned:
                self._sync_local(progress=progress)
                self._calibrate(domains)
            report.domains = domains.to_dict()
        return report

    def train_embedder(
        self,
        labelled: str | Path | None = None,
        *,
        domains: Sequence[str] | None = None,
        holdout: float = 0.15,
        seed: int = 0,
        target_precision: float | None = None,
        tune_backbone: bool = True,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Step 8 of docs/method.md: adapt each domain's recognition model to the catalogue (plus labelled photos).

        ``labelled``: a CSV with columns ``image`` (relative to the CSV) and
        ``product_id`` of extra photos of catalogue products. With
        ``tune_backbone``, first tunes the backbone's last stage on the
        catalogue photos (read again from their sources) and re-encodes the
        stored images through it (``tail_<domain>.pt``). Then trains the head
        on the stored raw descriptors, saves ``head_<domain>.pt`` and a rank
        calibration in the store (fitted on held-out labelled photos at
        ``target_precision``, default ``search.target_precision``; on
        synthetic views where there are none), and re-projects the stored
        vectors. The labelled photos also raise the store's
        ``intent.stop_score`` where the gate would stop more than 1 in 200
        of them (``extra["gate"]``). Returns an
        :class:`~shoplens.embed.EmbedderReport` per domain trained.
        """
        from .config import DOMAINS
        from .pipeline.training import train_store_embedder

        self._check_writable()
        with self._write_lock:
            reports = dict(train_store_embedder(
                self.store, self.pipeline, Path(labelled) if labelled is not None else None,
                domains=tuple(domains or DOMAINS), holdout=holdout, seed=seed,
                target_precision=target_precision, tune_backbone=tune_backbone, progress=progress))
            self._sync_local(progress=progress)  # re-encoded images have new ids
            self.refresh_calibrations()  # a domain with no labelled calibration: its views, embedded anew
            gate = next((r.extra["gate"] for r in reports.values() if "gate" in r.extra), None)
            if gate is not None and gate["stop_score"] != self.config.intent.stop_score:
                self.config = self.pipeline.config = self.config.with_flags(**{"intent.stop_score": gate["stop_score"]})
            self._save_config()
        return reports

    # -- queries ------------------------------------------------------------
    def search(
        self,
        images: Sequence[ImageSource],
        *,
        top_k: int | None = None,
        allowed: Allowed | None = None,
        filters: FilterLike | Iterable[FilterLike] | None = None,
        domain: str | None = None,
        box: BoxLike | None = None,
    ) -> list[SearchResult | ErrorResult]:
        """Steps 1–6 of docs/method.md for each image; unreadable images give an ErrorResult.

        ``filters`` (e.g. ``["category=Juice", "price<=20"]``, see
        :mod:`shoplens.filters`) restrict the index search itself.
        ``domain`` (``"apparel"`` / ``"other_product"``) searches every image
        in that domain whatever the intent gate says, a photo it would stop
        too; the result keeps the classifier's ``predicted_intent``.
        ``box`` (``(x0, y0, x1, y1)`` or ``"x0,y0,x1,y1"``, pixels of the photo
        as given) searches only that region of each photo, as a photo of its
        own (intent gate included): see :meth:`search_photo`. A malformed or
        empty box, or one outside a photo, raises :class:`BadBoxError`.
        """
        _ = self.pipeline.intent_classifier, self.pipeline.detector  # fail on bad configuration first
        _check_search_domain(domain)
        crop = parse_box(box)
        allowed = self._allowed(filters, allowed)
        return _each(
            images,
            lambda photo, ms: self._search_region(photo, crop, top_k=top_k, allowed=allowed, decode_ms=ms, domain=domain),
            target_size=self.pipeline.decode_size,
            preview=self.pipeline.preview if crop is None else None,  # a crop reads the photo decoded for every step
        )

    def search_photo(
        self, photo: Photo, *, top_k: int | None = None, filters: FilterLike | Iterable[FilterLike] | None = None, decode_ms: float = 0.0,
        domain: str | None = None, box: BoxLike | None = None,
    ) -> SearchResult:
        """Steps 1–6 of docs/method.md for a photo the caller decoded (with its own limits); ``domain`` as in :meth:`search`.

        ``box``: search only that region (pixels of ``photo.size``), cut from
        the decoded photo and searched as a whole photo; the result's
        ``steps["crop"]`` says which box was searched, and its regions' boxes
        are in the photo's pixels.
        """
        _check_search_domain(domain)
        crop = parse_box(box)
        return self._search_region(photo, crop, top_k=top_k, allowed=self._allowed(filters, None), decode_ms=decode_ms, domain=domain)

    @property
    def decode_size(self) -> int:
        """The longest side a search reads: a photo for :meth:`search_photo` may be decoded down to it (``load_image``'s ``target_size``)."""
        return self.pipeline.decode_size

    @property
    def preview(self) -> Callable[[int, int], tuple[int, int]] | None:
        """How small a photo for :meth:`search_photo` may be decoded first (``load_image``'s ``preview``); ``None``: in full at once.

        A photo to search a region of (``box``) is decoded in full instead: the crop reads the photo every step reads.
        """
        return self.pipeline.preview

    def _search_region(self, photo: Photo, box: Box | None, *, top_k: int | None, allowed: Allowed | None, decode_ms: float,
                       domain: str | None) -> SearchResult:
        if box is None:
            return self.pipeline.search(photo, self.store, top_k=top_k, allowed=allowed, decode_ms=decode_ms, domain=domain)
        start = time.perf_counter()
        region, (ox, oy) = crop_to_box(photo, box)
        decode_ms += (time.perf_counter() - start) * 1000.0  # a preview is decoded again for the crop
        result = self.pipeline.search(region, self.store, top_k=top_k, allowed=allowed, decode_ms=decode_ms, domain=domain)
        for r in result.regions:  # boxes found in the crop, reported in the photo's own pixels
            if r.box is not None:
                r.box = [round(r.box[0] + ox, 1), round(r.box[1] + oy, 1), round(r.box[2] + ox, 1), round(r.box[3] + oy, 1)]
        result.steps["crop"] = {"box": box_as_given(box), "photo_size": list(photo.size), "searched_size": list(region.size)}
        return result

    def _allowed(self, filters: FilterLike | Iterable[FilterLike] | None, allowed: Allowed | None) -> Allowed | None:
        """The allowed-ids function of ``filters`` (parsed now: bad syntax fails before any image)."""
        parsed = parse_filters(filters)
        if not parsed:
            return allowed
        cache: dict[str, np.ndarray] = {}

        def by_filters(domain: str) -> np.ndarray:
            if domain not in cache:
                ids = self.store.filter_image_ids(domain, parsed)
                extra = allowed(domain) if allowed is not None else None
                cache[domain] = ids if extra is None else np.intersect1d(ids, extra)
            return cache[domain]

        return by_filters

    def search_one(self, image: ImageSource, **kwargs: Any) -> SearchResult:
        result = self.search([image], **kwargs)[0]
        if isinstance(result, ErrorResult):
            raise BadImageError(result.error)
        return result

    def search_text(
        self,
        texts: str | Sequence[str],
        *,
        top_k: int | None = None,
        filters: FilterLike | Iterable[FilterLike] | None = None,
        domain: str | None = None,
    ) -> list[TextSearchResult]:
        """Search with words (``"red rain jacket"``): one result per text, one list per domain searched.

        Needs a CLIP or SigLIP backbone (``embed.DOMAIN.backbone``): the text
        tower's embedding queries the photos' index (:mod:`shoplens.pipeline.text_search`).
        ``domain`` searches that domain only; by default every domain holding
        products whose backbone has a text tower. Raises
        :class:`~shoplens.errors.NoTextModelError` when there is none, and
        :class:`ConfigError` for an empty or overlong text, before any search.
        """
        _check_search_domain(domain)
        queries = [check_text(t) for t in ([texts] if isinstance(texts, str) else texts)]
        allowed = self._allowed(filters, None)
        return [search_text(self.pipeline, self.store, text, top_k=top_k, allowed=allowed, domain=domain) for text in queries]

    def text_domains(self) -> list[str]:
        """The domains :meth:`search_text` reads by default: those holding products, indexed with a CLIP or SigLIP backbone."""
        return [d for d in DOMAINS if self.store.count_vectors(d) > 0 and has_text_tower(getattr(self.config.embed, d).backbone)]

    def classify(self, images: Sequence[ImageSource]) -> list[IntentResult | ErrorResult]:
        return classify_photos(self.pipeline, images)

    def detect(self, images: Sequence[ImageSource]) -> list[DetectResult | ErrorResult]:
        return detect_photos(self.pipeline, images)


def _check_search_domain(domain: str | None) -> None:
    """A search's domain override is a product domain (checked before any image is read)."""
    if domain is not None and domain not in DOMAINS:
        raise ConfigError(f"domain must be one of {', '.join(DOMAINS)} (or none: the intent gate decides), got {domain!r}")


def migrate(src: str | Path, dst: str | Path) -> MigrationReport:
    """Move a catalogue between stores or engines: products, images (raw descriptors), models.

    ``dst`` must be new or empty. The target projects the raw descriptors with
    the source's models (copied first); the counts are verified afterwards.
    The source is only read (it may be served meanwhile); the target is
    opened as its writer.
    """
    with open_store(src, read_only=True) as source:
        target = open_catalogue_store(dst, create=True)
        try:
            if target.count_products() or target.count_images():
                raise StoreError(f"{target.location}: the target store is not empty")
            files = copy_files(source.store, target)
            saved = target.artifacts.config()
            config = resolve_config(saved) if saved.exists() else source.config
            target.attach(Pipeline(config, target.artifacts), index=config.store.index)
            report = copy_catalogue(source.store, target)
            report.files = files
        finally:
            target.close()
    return report


def open_store(store: str | Path, **kwargs: Any) -> Shoplens:
    """Open an existing store (raises StoreError when there is none); ``read_only=True`` to search it beside its writer."""
    return Shoplens(store, create=False, **kwargs)
