"""Uploaded photos read within the server's limits: a file over the limit is refused before it is read whole."""

from fastapi import UploadFile

from ..errors import CatalogueError
from .errors import TooLarge
from .settings import ServerSettings


def upload_name(upload: UploadFile) -> str:
    """The upload's file name, printable and at most 256 characters (``upload`` when it has none)."""
    name = "".join(c for c in (upload.filename or "upload") if c.isprintable())[:256]
    return name or "upload"


def read_upload(upload: UploadFile, limit: int) -> bytes:
    size = getattr(upload, "size", None)
    if size is not None and size > limit:
        raise TooLarge(f"{upload_name(upload)}: the photo is {size} bytes, over the limit of {limit}")
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{upload_name(upload)}: the photo is over the limit of {limit} bytes")
    return data


def read_photos(photos: list[UploadFile], settings: ServerSettings) -> list[bytes]:
    """A product write's photos: at least one, not too many, each within the upload limit."""
    if not photos:
        raise CatalogueError("at least one photo is needed")
    if len(photos) > settings.max_photos_per_product * settings.max_batch_products:
        raise CatalogueError("too many photos in one request")
    return [read_upload(p, settings.max_upload_bytes) for p in photos]
