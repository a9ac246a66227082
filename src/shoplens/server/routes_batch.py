"""``POST /search/batch``: several photos in one request, answered in order.

Each photo is searched exactly as ``POST /search`` searches one (the same
``run_search``: its decoding limits, its search slot, its metrics, the hits'
``image_url``), one after the other, so a batch holds one search slot at a
time and never more than a single search would. A photo that cannot be
searched gets its error object in its place; the others are answered. What
is wrong with the request itself (too many photos, a bad filter) refuses the
whole batch before any photo is searched.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations, which name local settings.

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError

from ..errors import BadImageError
from ..filters import parse_filters
from ..results import SearchResult
from .models import DOMAIN_HELP, BatchError, ErrorBody, SearchDomain

#: :func:`shoplens.server.routes_search.run_search` bound to the server's state: ``run_search(data, name, top_k, filters, domain)``.
RunSearch = Callable[..., SearchResult]


def _name(upload: UploadFile) -> str:
    name = "".join(c for c in (upload.filename or "upload") if c.isprintable())[:256]
    return name or "upload"


def _read(upload: UploadFile, limit: int) -> bytes | BatchError:
    size = getattr(upload, "size", None)
    data = b"" if size is not None and size > limit else upload.file.read(limit + 1)
    if (size is not None and size > limit) or len(data) > limit:
        return BatchError(image=_name(upload), error=f"{_name(upload)}: the photo is over the limit of {limit} bytes", code="too_large")
    return data


def register(app: FastAPI, state: Any, run_search: RunSearch, reader: Sequence[Any]) -> None:
    """Add ``POST /search/batch`` to ``app`` (``state``: the server's :class:`ServerState`)."""
    settings = state.settings
    filter_help = "metadata filter FIELD OP VALUE, repeatable (all must hold), applied to every photo's search (see POST /search)"

    @app.post(
        "/search/batch",
        response_model=list[SearchResult | BatchError],
        tags=["search"],
        summary="Search the catalogue with several photos, answered in order",
        dependencies=list(reader),
        responses={
            400: {"model": ErrorBody, "description": "bad filter"},
            401: {"model": ErrorBody, "description": "the server has a read key: missing or wrong key"},
            413: {"model": ErrorBody, "description": "the request body is over the total upload limit"},
            422: {"model": ErrorBody, "description": "invalid request (no photo, too many photos …)"},
        },
        description=(
            f"Upload up to {settings.max_batch_photos} photos (multipart/form-data, one `photo` part each; server setting "
            "`--max-batch-photos`), the whole body within the total upload limit. The answer is a JSON array with one "
            "entry per photo, in the order sent: the search object `POST /search` would give for it, or, for a photo "
            "that could not be searched, `{\"image\", \"error\", \"code\"}` (`bad_image`, `too_large`). "
            "`top_k`, `filter` and `domain` apply to every photo. The photos are searched one after the other through "
            "the same search slots as `POST /search`."
        ),
    )
    def search_batch(
        photos: Annotated[list[UploadFile], File(alias="photo", description="the photos, one `photo` part each")],
        top_k: Annotated[int | None, Form(ge=1, le=settings.max_top_k, description="cap of each result list")] = None,
        filters: Annotated[list[str] | None, Form(alias="filter", description=filter_help)] = None,
        domain: Annotated[SearchDomain | None, Form(description=DOMAIN_HELP)] = None,
    ) -> list[SearchResult | BatchError]:
        if len(photos) > settings.max_batch_photos:
            raise RequestValidationError([{"type": "too_long", "loc": ("body", "photo"),
                                           "msg": f"at most {settings.max_batch_photos} photos per batch, got {len(photos)}"}])
        parse_filters(filters or [])  # a bad filter refuses the batch before any photo is decoded
        out: list[SearchResult | BatchError] = []
        for upload in photos:
            data = _read(upload, settings.max_upload_bytes)
            if isinstance(data, BatchError):
                out.append(data)
                continue
            try:
                out.append(run_search(data, _name(upload), top_k, filters or [], domain))
            except BadImageError as err:
                out.append(BatchError(image=_name(upload), error=str(err), code="bad_image"))
        return out
