"""``POST /search`` and ``POST /search/url``: the catalogue searched with one photo, uploaded or fetched.

Both go through :func:`run_search`, which ``POST /search/batch`` uses for each
of its photos: the top_k cap, the box checked before any decode, the decode
within the server's limits inside a search slot, the search through
:meth:`shoplens.Shoplens.search_photo`, its metrics, and each hit's
``image_url`` (the cached thumbnail of the photo that matched).
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations, which name local settings.

import time
from collections.abc import Sequence
from typing import Annotated

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.exceptions import RequestValidationError

from ..errors import BadImageError
from ..imaging import BoxLike, load_image, parse_box
from ..results import RegionResult, SearchResult
from .errors import READ_ERRORS
from .fetch import fetch
from .models import BOX_HELP, DOMAIN_HELP, ErrorBody, SearchDomain, UrlSearch
from .state import ServerState
from .thumbnails import DEFAULT_SIZE
from .uploads import read_upload, upload_name

FILTER_HELP = (
    "metadata filter FIELD OP VALUE, repeatable (all must hold), applied inside the index search: "
    "category=Juice, category=Juice|Milk, brand!=Acme, price<=20, price>5, title~apple"
)


def run_search(state: ServerState, data: bytes, name: str, top_k: int | None, filters: Sequence[str], domain: str | None = None,
               box: BoxLike | None = None) -> SearchResult:
    """Decode ``data`` within the server's limits and search it, inside a search slot; the hits carry ``image_url``."""
    settings, lens = state.settings, state.lens
    check_top_k(state, top_k)
    crop = parse_box(box)  # malformed: refused before the photo is decoded
    # The decode takes a search slot too: a photo of a few KB can decode to tens of MB, so at most
    # search_concurrency decodes are in flight, however many uploads arrive at once.
    with state.search_slots:
        start = time.perf_counter()
        try:
            photo = load_image(data, name=name, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels,
                               max_decoded_bytes=settings.max_decoded_bytes, target_size=lens.decode_size,
                               preview=lens.preview if crop is None else None)  # a crop reads the full decode
        except BadImageError:
            state.metrics.bad_images.inc()
            raise
        decode_ms = (time.perf_counter() - start) * 1000.0
        result = lens.search_photo(photo, top_k=top_k, filters=list(filters), decode_ms=decode_ms, domain=domain, box=crop)
    state.metrics.observe_search(result)
    set_image_urls(state, result.regions)
    return result


def check_top_k(state: ServerState, top_k: int | None) -> None:
    """A JSON body's ``top_k`` within the server's cap (a form field's is checked by its declaration)."""
    if top_k is not None and top_k > state.settings.max_top_k:
        raise RequestValidationError([{"type": "less_than_equal", "loc": ("body", "top_k"), "msg": f"top_k is at most {state.settings.max_top_k}"}])


def thumbnail_url(image_id: int | None, sha1: str | None, size: int = DEFAULT_SIZE) -> str | None:
    return None if image_id is None or sha1 is None else f"/images/{image_id}/thumbnail?size={size}&v={sha1[:16]}"


def set_image_urls(state: ServerState, regions: Sequence[RegionResult]) -> None:
    """Give each hit its ``image_url``: the thumbnail of the photo that matched (it changes with the photo).

    One store query for all the hits; the URL is set on the hits themselves
    (an extra field of :class:`~shoplens.results.ProductHit`), not on a copy of the result.
    """
    hits = [h for r in regions for h in r.results]
    sha1s = state.thumbnails.sha1s(h.matched_image_id for h in hits if h.matched_image_id is not None)
    for hit in hits:
        image_id = hit.matched_image_id
        hit.image_url = thumbnail_url(image_id, None if image_id is None else sha1s.get(image_id))  # type: ignore[attr-defined]


def register(app: FastAPI, state: ServerState) -> None:
    """Add ``POST /search`` and ``POST /search/url`` to ``app``."""
    settings = state.settings

    @app.post(
        "/search",
        response_model=SearchResult,
        tags=["search"],
        summary="Search the catalogue with a photo",
        dependencies=state.keys.reader,
        responses=READ_ERRORS,
        description=(
            "Upload one photo (multipart/form-data, part `photo`). The answer is the search object documented in docs/method.md, the same as "
            "`shoplens search --json`: the intent, and for product photos one result list per region (each garment, "
            "or the whole photo). A non_product photo stops after the intent step: `regions` is empty and `reason` says "
            "why; send `domain` to search it anyway. An empty result list carries its `reason`."
        ),
    )
    def search(
        photo: Annotated[UploadFile, File(description="the photo (JPEG, PNG, WebP, GIF …)")],
        top_k: Annotated[int | None, Form(ge=1, le=settings.max_top_k, description="cap of each result list (default: the store's search.top_k)")] = None,
        filters: Annotated[list[str] | None, Form(alias="filter", description=FILTER_HELP)] = None,
        domain: Annotated[SearchDomain | None, Form(description=DOMAIN_HELP)] = None,
        box: Annotated[str | None, Form(max_length=200, description=BOX_HELP)] = None,
    ) -> SearchResult:
        data = read_upload(photo, settings.max_upload_bytes)
        return run_search(state, data, upload_name(photo), top_k, filters or [], domain, box)

    @app.post(
        "/search/url",
        response_model=SearchResult,
        tags=["search"],
        summary="Search with a photo the server fetches from an allow-listed URL",
        dependencies=state.keys.reader,
        responses={**READ_ERRORS, 403: {"model": ErrorBody, "description": "URL fetching disabled or URL not allowed"}},
        description="Disabled (403) unless the server was started with an allow-list (--allow-url PREFIX). Redirects are not followed.",
    )
    def search_url(body: UrlSearch) -> SearchResult:
        data = fetch(body.url, settings.url_allowlist, max_bytes=settings.max_upload_bytes, timeout=settings.url_timeout_s)
        return run_search(state, data, body.url, body.top_k, body.filters, body.domain, body.box)

