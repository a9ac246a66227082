"""``/images/…``: product photos by image id, a product's first photo, and the cached thumbnails of result cards."""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations.

import mimetypes
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response

from ..errors import NotFoundError
from .errors import READ_ERRORS, error
from .models import ErrorBody
from .state import ServerState
from .thumbnails import DEFAULT_SIZE, SIZES, media_type_for

PHOTO_DOC: dict[int | str, dict[str, Any]] = {
    **READ_ERRORS,
    200: {"content": {"image/*": {}}, "description": "the photo"},
    404: {"model": ErrorBody, "description": "no such image"},
}
THUMBNAIL_DOC: dict[int | str, dict[str, Any]] = {
    **READ_ERRORS,
    200: {"content": {"image/jpeg": {}, "image/webp": {}}, "description": "the thumbnail (WebP when the request accepts image/webp)"},
    304: {"description": "not modified (If-None-Match names the current ETag)"},
    400: {"model": ErrorBody, "description": "a size that is not offered (code bad_size)"},
    404: {"model": ErrorBody, "description": "no such image"},
}
THUMBNAIL_TEXT = (
    "The photo shrunk to `size` pixels on its longest side (never enlarged), EXIF orientation applied, as JPEG, "
    "or WebP for a client that accepts it. Made on the first request and kept under `<store>/thumbnails/`, named "
    "by the photo's content: search hits' `image_url` points here, with `v` naming the photo's version, so a "
    "changed photo gets a new URL. `ETag` and `If-None-Match` (304) as usual."
)


def register(app: FastAPI, state: ServerState) -> None:
    """Add the ``/images/…`` routes to ``app``."""

    @app.get("/images/{image_id}", tags=["photos"], summary="A product photo, by image id", response_class=FileResponse,
           dependencies=state.keys.reader, responses=PHOTO_DOC)
    def get_image(image_id: Annotated[int, PathParam(ge=0, le=2**62, description="an image id from a product's `images`")]) -> FileResponse:
        return photo_response(state, image_id)

    @app.get("/images/of-product/{product_id:path}", tags=["photos"], summary="A product's first photo", response_class=FileResponse,
           dependencies=state.keys.reader, responses=PHOTO_DOC)
    def get_product_image(product_id: Annotated[str, PathParam(description="the product's id")]) -> FileResponse:
        images = state.lens.product_images(product_id)
        if not images:
            raise NotFoundError(f"no photo of product {product_id!r}")
        return photo_response(state, images[0][0])

    # Registered after /images/of-product/{id}: a product called "thumbnail" keeps its photo.
    @app.get("/images/{image_id}/thumbnail", tags=["photos"], summary="A product photo resized for a result card (cached)",
           response_class=Response, dependencies=state.keys.reader, responses=THUMBNAIL_DOC, description=THUMBNAIL_TEXT)
    def get_thumbnail(
        request: Request,
        image_id: Annotated[int, PathParam(ge=0, le=2**62, description="an image id (search hits' `image_url`, a product's `images`)")],
        size: Annotated[int, Query(description=f"longest side in pixels: one of {', '.join(map(str, SIZES))}",
                                   json_schema_extra={"enum": list(SIZES)})] = DEFAULT_SIZE,
        v: Annotated[str | None, Query(max_length=64, description="the photo's version, as `image_url` gives it (it only keys caches)")] = None,
    ) -> Response:
        return thumbnail_response(state, request, image_id, size, v)



def photo_response(state: ServerState, image_id: int) -> FileResponse:
    path = state.lens.image_file(image_id)
    if path is None:
        raise NotFoundError(f"no photo with image id {image_id}")
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not media.startswith("image/"):
        media = "application/octet-stream"
    cache = "private, max-age=3600" if state.settings.reads_need_key else "public, max-age=3600"  # no shared cache keeps a private photo
    return FileResponse(path, media_type=media, headers={"Cache-Control": cache})


def thumbnail_response(state: ServerState, request: Request, image_id: int, size: int, v: str | None) -> Response:
    """The thumbnail of ``image_id`` at ``size``, from the cache or made now (inside a search slot), or 304."""
    if size not in SIZES:
        return error(400, "bad_size", f"thumbnail size {size} is not offered: ask for one of {', '.join(map(str, SIZES))}")
    thumbnails = state.thumbnails
    sha1 = thumbnails.sha1(image_id)
    photo = None if sha1 is None else state.lens.image_file(image_id)
    if sha1 is None or photo is None:
        raise NotFoundError(f"no photo with image id {image_id}")
    media = media_type_for(request.headers.get("accept", ""))
    etag = thumbnails.etag(sha1, size, media)
    scope = "private" if state.settings.reads_need_key else "public"  # no shared cache keeps a private photo
    # A URL naming the photo's version never changes what it answers; any other is revalidated by its ETag.
    versioned = v is not None and len(v) >= 16 and sha1.startswith(v)
    headers = {"ETag": etag, "Vary": "Accept",
               "Cache-Control": f"{scope}, max-age=86400, immutable" if versioned else f"{scope}, no-cache"}
    asked = {t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")}
    if etag in asked or "*" in asked:
        return Response(status_code=304, headers=headers)
    thumb = thumbnails.cached(sha1, size, media)
    headers["X-Thumbnail-Cache"] = "hit" if thumb is not None else "miss"
    if thumb is None:
        with state.search_slots:  # a decode, bounded like a search's
            thumb = thumbnails.cached(sha1, size, media) or thumbnails.make(photo, sha1, size, media)
    return Response(thumb.data, media_type=thumb.media_type, headers=headers)
