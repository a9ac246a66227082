"""Result-card thumbnails: product photos resized once, kept on disk under the store.

A thumbnail is named by its photo's content (the SHA-1 the store keeps for
every image) and its size and format: ``<store>/thumbnails/ab/ab12…-256.jpg``.
A changed photo has another SHA-1, so another thumbnail (and URL and ETag);
the files of a photo no image has any more are removed after the write that
dropped it, and at start-up for what changed while the server was stopped.
Photos are decoded through :func:`shoplens.imaging.load_image`, with the
server's pixel and decoded-memory limits, reduced while decoding where the
format allows it (JPEG draft mode).
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..imaging import load_image, to_pil
from ..store.base import CatalogueStore

log = logging.getLogger(__name__)

THUMBNAILS_DIR = "thumbnails"
#: Longest sides a thumbnail may be asked for (anything else: 400): a few sizes, so the cache stays small.
SIZES = (128, 256, 512)
DEFAULT_SIZE = 256
#: Output formats by media type; WebP goes to clients that accept it.
FORMATS = {"image/webp": ("WEBP", ".webp"), "image/jpeg": ("JPEG", ".jpg")}
_FILE = re.compile(r"[0-9a-f]{40}-\d+\.(?:jpg|webp)")
_TMP = re.compile(r"\.[0-9a-f]{40}-.*\.tmp")


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail ready to send: its bytes, media type and ETag (photo content, size, format)."""

    data: bytes
    media_type: str
    etag: str


def media_type_for(accept: str) -> str:
    """WebP for a client that says it takes it (browsers loading an <img>), JPEG otherwise."""
    return "image/webp" if "image/webp" in accept.lower() else "image/jpeg"


class ThumbnailCache:
    """Thumbnails of a store's images, made on first request and kept under ``<store>/thumbnails/``."""

    def __init__(self, store: CatalogueStore, *, max_bytes: int, max_pixels: int, max_decoded_bytes: int) -> None:
        self.store = store
        self.root = Path(store.root) / THUMBNAILS_DIR
        self.max_bytes, self.max_pixels, self.max_decoded_bytes = max_bytes, max_pixels, max_decoded_bytes
        self._lock = threading.Lock()  # one cleaner at a time

    def sha1(self, image_id: int) -> str | None:
        """The content hash of a stored image (what its thumbnails are named by), or None."""
        return self.store.image_sha1s([image_id]).get(image_id)

    def sha1s(self, image_ids: Iterable[int]) -> dict[int, str]:
        """:meth:`sha1` of several images at once (a search's hits: one store query)."""
        return self.store.image_sha1s(list(image_ids))

    def path(self, sha1: str, size: int, media_type: str) -> Path:
        return self.root / sha1[:2] / f"{sha1}-{size}{FORMATS[media_type][1]}"

    @staticmethod
    def etag(sha1: str, size: int, media_type: str) -> str:
        return f'"{sha1}-{size}{FORMATS[media_type][1]}"'

    def cached(self, sha1: str, size: int, media_type: str) -> Thumbnail | None:
        try:
            data = self.path(sha1, size, media_type).read_bytes()
        except OSError:
            return None
        return Thumbnail(data, media_type, self.etag(sha1, size, media_type))

    def make(self, photo: Path, sha1: str, size: int, media_type: str) -> Thumbnail:
        """Decode ``photo`` (bounded), shrink it to ``size`` on its longest side, encode and keep it.

        Raises :class:`shoplens.errors.BadImageError` when the photo cannot be decoded within the limits.
        A store folder that cannot be written (a read-only store) only means the thumbnail is not kept.
        """
        decoded = load_image(photo, name=f"image {sha1[:12]}", target_size=size, max_bytes=self.max_bytes,
                             max_pixels=self.max_pixels, max_decoded_bytes=self.max_decoded_bytes)
        img = to_pil(decoded)
        img.thumbnail((size, size), Image.Resampling.LANCZOS)  # only ever shrinks
        buf = io.BytesIO()
        fmt = FORMATS[media_type][0]
        img.save(buf, fmt, quality=82, **({"optimize": True, "progressive": True} if fmt == "JPEG" else {"method": 4}))
        data = buf.getvalue()
        self._keep(self.path(sha1, size, media_type), data)
        return Thumbnail(data, media_type, self.etag(sha1, size, media_type))

    def _keep(self, path: Path, data: bytes) -> None:
        tmp = path.parent / f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            tmp.replace(path)  # readers see the whole file or none
        except OSError as err:
            log.debug("thumbnail %s not kept: %s", path.name, err)
            tmp.unlink(missing_ok=True)

    def forget(self, sha1s: Iterable[str]) -> int:
        """Remove the thumbnails of the photos in ``sha1s`` that no stored image has any more; returns how many files went.

        Called after the write that may have dropped them has committed.
        """
        wanted = {s for s in sha1s if re.fullmatch(r"[0-9a-f]{40}", s)}
        if not wanted or not self.root.is_dir():
            return 0
        with self._lock:
            gone = wanted - self.store.sha1s_in_use(sorted(wanted))
            removed = 0
            for sha1 in gone:
                for path in (self.root / sha1[:2]).glob(f"{sha1}-*"):
                    removed += _unlink(path)
        if removed:
            log.info("%s: removed %d thumbnail(s) of photos no product has any more", self.root, removed)
        return removed

    def sweep(self) -> int:
        """Remove every thumbnail whose photo no stored image has (changed while the server was stopped), and leftovers."""
        if not self.root.is_dir():
            return 0
        sha1s: set[str] = set()
        for path in self.root.glob("*/*"):
            if _FILE.fullmatch(path.name):
                sha1s.add(path.name[:40])
            elif _TMP.fullmatch(path.name):
                _unlink(path)
        return self.forget(sha1s)

    def sha1s_of(self, product_ids: Iterable[str]) -> set[str]:
        """Content hashes of the products' photos: what a write to them may leave unused."""
        out: set[str] = set()
        for pid in product_ids:
            for _, _, source in self.store.product_images(pid):
                found = self.store.find_image(pid, source)
                if found is not None:
                    out.add(found[1])
        return out


def _unlink(path: Path) -> int:
    try:
        path.unlink()
        return 1
    except FileNotFoundError:
        return 0
    except OSError as err:
        log.warning("could not remove %s: %s", path, err)
        return 0
