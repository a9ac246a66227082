"""Move a catalogue between stores (and so between engines), verified by counts."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import DOMAINS
from ..errors import StoreError
from .base import CatalogueStore, WriteBatch

log = logging.getLogger(__name__)


@dataclass
class MigrationReport:
    products: int = 0
    images: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def copy_files(src: CatalogueStore, dst: CatalogueStore) -> list[str]:
    """Copy the trained models and the saved configuration (call before opening ``dst``'s pipeline).

    Every file of ``src.artifacts``: returns their names (``models/…``, ``config.json``).
    """
    return dst.artifacts.copy_from(src.artifacts)


def copy_catalogue(src: CatalogueStore, dst: CatalogueStore, *, batch: int = 500) -> MigrationReport:
    """Copy every product and image (raw descriptors) of ``src`` into an empty ``dst``.

    ``dst`` projects the raw descriptors with its own projector (give it the
    same models: :func:`copy_files` first). Raises :class:`StoreError` unless
    the counts agree afterwards: products, images per domain, and searchable
    vectors per domain.
    """
    if dst.count_products() or dst.count_images():
        raise StoreError(f"{dst.location}: the target store is not empty")
    report = MigrationReport()
    pending = WriteBatch()
    for product in src.iter_products(batch):
        pending.products.append(product)
        if len(pending.products) >= batch:
            dst.write(pending)
            pending = WriteBatch()
    dst.write(pending)
    pending = WriteBatch()
    for image in src.iter_images(batch):
        pending.add_images.append(image)
        if len(pending.add_images) >= batch:
            dst.write(pending)
            pending = WriteBatch()
    dst.write(pending)
    dst.persist()
    report.products = dst.count_products()
    report.images = {d: dst.count_images(d) for d in DOMAINS}
    checks = [("products", src.count_products(), report.products)]
    for d in DOMAINS:
        checks.append((f"{d} images", src.count_images(d), report.images[d]))
        checks.append((f"{d} vectors", src.count_images(d), dst.count_vectors(d)))
    wrong = [f"{what}: {a} in the source, {b} in the target" for what, a, b in checks if a != b]
    if wrong:
        raise StoreError(f"migration to {dst.location} does not verify: " + "; ".join(wrong))
    log.info("migrated %d products, %s images from %s to %s", report.products, report.images, src.location, dst.location)
    return report
