"""The Python API: a store and the pipeline that indexes and searches it.

>>> from shoplens import Shoplens
>>> with Shoplens("my-store") as lens:
...     lens.index("catalog.csv")
...     result = lens.search_one("photo.jpg")

The CLI and the HTTP server are thin layers over this module.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np

from .catalog import CatalogueRow, read_catalogue
from .config import INTENTS, Config, resolve_config
from .errors import BadImageError, NotFoundError
from .imaging import ImageSource, Photo, load_image
from .indexing import IndexReport, Indexer
from .pipeline import EncodingCache, Pipeline
from .results import DetectResult, ErrorResult, GarmentResult, IntentResult, SearchResult
from .errors import StoreError
from .store import CatalogueStore, ProductRecord, WriteBatch, open_catalogue_store
from .store.migrate import MigrationReport, copy_catalogue, copy_files

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
R = TypeVar("R")


def _name(source: ImageSource, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or f"<image {index}>"


def _each(pipeline: Pipeline, images: Sequence[ImageSource], fn: Callable[[Photo, float], R]) -> list[R | ErrorResult]:
    """Decode each image and run ``fn``; an unreadable image gives an ErrorResult, the others go on."""
    target = max(e.input_size or 224 for e in pipeline.embedders.values())
    out: list[R | ErrorResult] = []
    for i, source in enumerate(images):
        name = _name(source, i)
        start = time.perf_counter()
        try:
            photo = load_image(source, name=name, target_size=target)
        except BadImageError as err:
            out.append(ErrorResult(image=name, error=str(err)))
            continue
        out.append(fn(photo, (time.perf_counter() - start) * 1000.0))
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

    return _each(pipeline, images, one)


def detect_photos(pipeline: Pipeline, images: Sequence[ImageSource]) -> list[DetectResult | ErrorResult]:
    _ = pipeline.detector  # a bad configuration fails before any image is read

    def one(photo: Photo, _ms: float) -> DetectResult:
        garments = pipeline.detect(EncodingCache(pipeline, [photo]))[0]
        return DetectResult(image=photo.name, garments=[GarmentResult(**g.to_dict()) for g in garments])  # type: ignore[arg-type]

    return _each(pipeline, images, one)


def classify(images: Sequence[ImageSource], config: Config | None = None) -> list[IntentResult | ErrorResult]:
    """Intent of each image, without any store (SPEC ``shoplens classify``)."""
    return classify_photos(Pipeline(config), images)


def detect(images: Sequence[ImageSource], config: Config | None = None) -> list[DetectResult | ErrorResult]:
    """Garments in each image, without any store (SPEC ``shoplens detect``)."""
    return detect_photos(Pipeline(config), images)


def _open(location: str | Path, create: bool, engine: str) -> CatalogueStore:
    store = open_catalogue_store(location, create=create)
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
    """

    def __init__(
        self,
        store: str | Path,
        *,
        config: Config | None = None,
        config_file: str | Path | None = None,
        create: bool = True,
        **flags: Any,
    ) -> None:
        requested = resolve_config(config_file, base=config, **flags)
        self.store = _open(store, create, requested.store.engine)
        try:
            base = config
            saved = self.store.root / CONFIG_FILE
            if base is None and saved.exists():
                base = resolve_config(saved)
            self.config = resolve_config(config_file, base=base, **flags)
            self.pipeline = Pipeline(self.config, models_dir=self.store.models_dir)
            self.store.attach(self.pipeline, index=self.config.store.index)
        except BaseException:
            self.store.close()
            raise

    # -- lifecycle ----------------------------------------------------------
    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Shoplens":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _save_config(self) -> None:
        path = self.store.root / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.config.to_dict(), indent=2) + "\n", "utf-8")
        tmp.replace(path)

    # -- catalogue ----------------------------------------------------------
    def index(self, catalogue: str | Path | Iterable[CatalogueRow], *, progress: bool = False) -> IndexReport:
        """Add or update the products of a catalogue CSV, folder or rows.

        Each product listed gets exactly the images listed for it; unchanged
        images are not embedded again.
        """
        rows = read_catalogue(catalogue) if isinstance(catalogue, (str, os.PathLike)) else catalogue
        report = Indexer(self.pipeline, self.store).run(rows, progress=progress)
        self._save_config()
        return report

    def delete_products(self, product_ids: Sequence[str]) -> int:
        """Delete products and their images; returns how many existed."""
        existing = [p for p in product_ids if self.store.get_product(p) is not None]
        self.store.write(WriteBatch(delete_products=existing))
        return len(existing)

    def get_product(self, product_id: str) -> ProductRecord:
        record = self.store.get_product(product_id)
        if record is None:
            raise NotFoundError(f"no product {product_id!r}")
        return record

    def list_products(self, offset: int = 0, limit: int = 100) -> list[ProductRecord]:
        return self.store.list_products(offset, limit)

    def count_products(self) -> int:
        return self.store.count_products()

    # -- queries ------------------------------------------------------------
    def search(
        self,
        images: Sequence[ImageSource],
        *,
        top_k: int | None = None,
        allowed: Callable[[str], np.ndarray | None] | None = None,
    ) -> list[SearchResult | ErrorResult]:
        """SPEC steps 1–6 for each image; unreadable images give an ErrorResult."""
        _ = self.pipeline.intent_classifier, self.pipeline.detector  # fail on bad configuration first
        return _each(
            self.pipeline,
            images,
            lambda photo, ms: self.pipeline.search(photo, self.store, top_k=top_k, allowed=allowed, decode_ms=ms),
        )

    def search_one(self, image: ImageSource, **kwargs: Any) -> SearchResult:
        result = self.search([image], **kwargs)[0]
        if isinstance(result, ErrorResult):
            raise BadImageError(result.error)
        return result

    def classify(self, images: Sequence[ImageSource]) -> list[IntentResult | ErrorResult]:
        return classify_photos(self.pipeline, images)

    def detect(self, images: Sequence[ImageSource]) -> list[DetectResult | ErrorResult]:
        return detect_photos(self.pipeline, images)


def migrate(src: str | Path, dst: str | Path) -> MigrationReport:
    """Move a catalogue between stores or engines: products, images (raw descriptors), models.

    ``dst`` must be new or empty. The target projects the raw descriptors with
    the source's models (copied first); the counts are verified afterwards.
    """
    with open_store(src) as source:
        target = open_catalogue_store(dst, create=True)
        try:
            if target.count_products() or target.count_images():
                raise StoreError(f"{target.location}: the target store is not empty")
            files = copy_files(source.store, target)
            config = resolve_config(target.root / CONFIG_FILE) if (target.root / CONFIG_FILE).exists() else source.config
            target.attach(Pipeline(config, models_dir=target.models_dir), index=config.store.index)
            report = copy_catalogue(source.store, target)
            report.files = files
        finally:
            target.close()
    return report


def open_store(store: str | Path, **kwargs: Any) -> Shoplens:
    """Open an existing store (raises StoreError when there is none)."""
    return Shoplens(store, create=False, **kwargs)
