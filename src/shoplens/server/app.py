"""The FastAPI application: a thin HTTP face over :class:`shoplens.Shoplens`.

``create_app(lens, settings)`` builds it; ``shoplens serve`` runs it with
uvicorn. Every handler does what the Python API does, nothing more: search a
photo, add / update / delete products (with their photos), read the
catalogue, serve product photos (and cached thumbnails) by image id, health, readiness, metrics and
the web page at ``/``.
"""


import html
import json
import logging
import mimetypes
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from .. import __version__
from ..api import IndexReport, ProductInput, Shoplens
from ..config import DOMAINS
from ..errors import (
    BadBoxError,
    BadImageError,
    CatalogueError,
    ConfigError,
    FilterError,
    MissingDependencyError,
    NotFoundError,
    ShoplensError,
    StoreError,
    UnknownModelError,
)
from ..imaging import DEFAULT_MAX_BYTES, BoxLike, load_image, parse_box
from ..results import SearchResult
from . import docs_ui, routes_batch, routes_imports
from .fetch import FetchFailed, FetchRefused, FetchTooLarge, fetch
from .guard import Guard, auth_problem, presented_key, read_problem
from .metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from .models import (
    BOX_HELP,
    DOMAIN_HELP,
    BatchProduct,
    BatchWritten,
    DeleteRequest,
    DeleteResult,
    ErrorBody,
    Health,
    Product,
    ProductFields,
    ProductImage,
    ProductPage,
    ProductPatch,
    ProductWritten,
    Ready,
    SearchDomain,
    UrlSearch,
    WriteReport,
)
from .settings import ServerSettings
from .slots import SearchSlots
from .thumbnails import DEFAULT_SIZE, SIZES, ThumbnailCache, media_type_for

log = logging.getLogger(__name__)

STATIC = resources.files("shoplens.server") / "static"
FILTER_HELP = (
    "metadata filter FIELD OP VALUE, repeatable (all must hold), applied inside the index search: "
    "category=Juice, category=Juice|Milk, brand!=Acme, price<=20, price>5, title~apple"
)
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "bad request (e.g. bad filter syntax)"},
    413: {"model": ErrorBody, "description": "upload over the size or pixel limit"},
    415: {"model": ErrorBody, "description": "wrong content type"},
    422: {"model": ErrorBody, "description": "invalid request or unreadable photo"},
}
READ_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    401: {"model": ErrorBody, "description": "the server has a read key: missing or wrong key"},
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    401: {"model": ErrorBody, "description": "missing or wrong API key"},
    403: {"model": ErrorBody, "description": "writes are disabled (no API key configured)"},
}



class TooLarge(ShoplensError):
    """An uploaded file over the per-photo limit."""


_STATUS_OF: list[tuple[type[Exception], int, str]] = [
    (TooLarge, 413, "too_large"),
    (FetchRefused, 403, "url_not_allowed"),
    (FetchTooLarge, 413, "too_large"),
    (FetchFailed, 422, "url_fetch_failed"),
    (BadImageError, 422, "bad_image"),
    (BadBoxError, 400, "bad_box"),
    (FilterError, 400, "bad_filter"),
    (NotFoundError, 404, "not_found"),
    (CatalogueError, 422, "bad_product"),
    (ConfigError, 400, "bad_config"),
    (UnknownModelError, 400, "unknown_model"),
    (MissingDependencyError, 501, "missing_dependency"),
    (StoreError, 503, "store_unavailable"),
    (ShoplensError, 400, "error"),
]


def error(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "code": code}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


class ServerState:
    """What the handlers share: the lens, settings, metrics, locks and background work."""

    def __init__(self, lens: Shoplens, settings: ServerSettings) -> None:
        self.lens = lens
        self.settings = settings
        self.search_slots = SearchSlots(settings.search_concurrency)  # first come, first served
        self.metrics = Metrics(self.counts)
        # Catalogue photos were accepted by size when indexed; the pixel and decoded-memory limits bound the decode.
        self.thumbnails = ThumbnailCache(lens.store, max_bytes=max(settings.max_upload_bytes, DEFAULT_MAX_BYTES),
                                         max_pixels=settings.max_pixels, max_decoded_bytes=settings.max_decoded_bytes)
        self.ready = threading.Event()
        self.warm_error: str | None = None
        self.dirty = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def counts(self) -> tuple[int, dict[str, int]]:
        store = self.lens.store
        return store.count_products(), {d: store.count_images(d) for d in DOMAINS}

    # -- background work ------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        for target, name in ((self._warm_up, "shoplens-warm-up"), (self._persist_loop, "shoplens-persist")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        self._threads.clear()
        self.persist()

    def persist(self) -> None:
        if self.dirty.is_set():
            self.dirty.clear()
            self.lens.store.persist()

    def _warm_up(self) -> None:
        """Load the models and the vector indexes once, so the first search is not slow."""
        try:
            self.thumbnails.sweep()  # photos changed or removed while the server was stopped
        except Exception:
            log.exception("cleaning the thumbnail cache failed")
        try:
            self.lens.warm_up()
            self.ready.set()
            log.info("models and indexes loaded: ready")
        except Exception as err:  # noqa: BLE001 - reported by /readyz
            self.warm_error = f"{type(err).__name__}: {err}"
            log.error("warm-up failed: %s", self.warm_error)

    def _persist_loop(self) -> None:
        while not self._stop.wait(self.settings.persist_interval_s):
            try:
                self.persist()
            except Exception:
                log.exception("saving the vector indexes failed")


def create_app(lens: Shoplens, settings: ServerSettings | None = None) -> FastAPI:
    """The HTTP API and web page over ``lens`` (which the caller opens and closes)."""
    settings = settings or ServerSettings()
    state = ServerState(lens, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(
        title="shoplens",
        version=__version__,
        summary="Search a shop's own product catalogue with a photo.",
        description=(
            "Search by photo (intent gate → garment detection → per-region embedding → index search → rank filter → "
            "category entropy filter → category-aware ordering), with metadata filters applied inside the index search; "
            "add, update and delete products with their photos. Write endpoints need the API key "
            "(X-API-Key header or Authorization: Bearer); with no key configured on the server they answer 403. "
            "A server started with a read key (SHOPLENS_READ_KEY) also wants a key for search, products, photos and "
            "metrics: the read key or the write key; health, readiness, the web page and this schema stay open. "
            "Every error is JSON: {\"error\": message, \"code\": code}."
        ),
        docs_url=None,  # FastAPI's Swagger UI loads from a CDN: docs_ui serves /docs from bundled files
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.shoplens = state

    # -- errors -----------------------------------------------------------------
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        codes = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path} (see /openapi.json)"
        if exc.status_code == 400 and "parsing the body" in message:
            message = "the request body could not be parsed: " + _expected_body(request)
        return error(exc.status_code, codes.get(exc.status_code, "error"), message, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [_detail(e) for e in exc.errors()]
        ctype = request.headers.get("content-type", "")
        body_missing = any(d["loc"][:1] == ["body"] and d["type"] == "missing" for d in details)
        if body_missing and request.method in ("POST", "PUT") and request.url.path != "/products/batch-delete" and not ctype.startswith("multipart/form-data"):
            return error(415, "unsupported_media_type", f"expected multipart/form-data, got {ctype or 'no content type'}: " + _expected_body(request))
        if any(d["type"] == "json_invalid" for d in details):
            return error(422, "bad_json", "the request body is not valid JSON", details)
        summary = "; ".join(f"{'.'.join(str(p) for p in d['loc'][1:]) or d['loc'][0]}: {d['msg']}" for d in details[:5])
        return error(422, "invalid_request", summary, details)

    @app.exception_handler(ShoplensError)
    async def shoplens_error(_: Request, exc: ShoplensError) -> JSONResponse:
        status, code = next((s, c) for cls, s, c in _STATUS_OF if isinstance(exc, cls))
        return error(status, code, str(exc))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error", exc_info=exc)
        return error(500, "internal", "internal server error (logged on the server)")

    # -- auth (documented in the schema; enforced before the body is read by Guard) --
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the write API key (or, for reads, the read key)")
    bearer = HTTPBearer(auto_error=False, description="the write API key (or, for reads, the read key) as a bearer token")

    def write_key(
        key: Annotated[str | None, Security(key_header)] = None,
        token: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
    ) -> None:
        problem = auth_problem(settings, key if key is not None else (token.credentials if token else None))
        if problem is not None:
            status, _, message = problem
            raise HTTPException(status, message)

    writer = [Depends(write_key)]

    def read_key(
        key: Annotated[str | None, Security(key_header)] = None,
        token: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None,
    ) -> None:
        problem = read_problem(settings, key if key is not None else (token.credentials if token else None))
        if problem is not None:
            status, _, message = problem
            raise HTTPException(status, message)

    reader = [Depends(read_key)]

    # -- search -----------------------------------------------------------------
    def run_search(data: bytes, name: str, top_k: int | None, filters: Sequence[str], domain: str | None = None,
                   box: BoxLike | None = None) -> SearchResult:
        if top_k is not None and top_k > settings.max_top_k:
            raise RequestValidationError([{"type": "less_than_equal", "loc": ("body", "top_k"), "msg": f"top_k is at most {settings.max_top_k}"}])
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
        return with_image_urls(result)

    def thumbnail_url(image_id: int | None, size: int = DEFAULT_SIZE) -> str | None:
        sha1 = None if image_id is None else state.thumbnails.sha1(image_id)
        return None if sha1 is None else f"/images/{image_id}/thumbnail?size={size}&v={sha1[:16]}"

    def with_image_urls(result: SearchResult) -> SearchResult:
        """Each hit with ``image_url``: the thumbnail of the photo that matched (it changes with the photo)."""
        urls = {i: thumbnail_url(i) for i in {h.matched_image_id for r in result.regions for h in r.results}}
        data = result.model_dump()
        for region, served in zip(result.regions, data["regions"]):
            for hit, out in zip(region.results, served["results"]):
                out["image_url"] = urls[hit.matched_image_id]
        return SearchResult.model_validate(data)

    @app.post(
        "/search",
        response_model=SearchResult,
        tags=["search"],
        summary="Search the catalogue with a photo",
        dependencies=reader,
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
        data = _read_upload(photo, settings.max_upload_bytes)
        return run_search(data, _upload_name(photo), top_k, filters or [], domain, box)

    @app.post(
        "/search/url",
        response_model=SearchResult,
        tags=["search"],
        summary="Search with a photo the server fetches from an allow-listed URL",
        dependencies=reader,
        responses={**READ_ERRORS, 403: {"model": ErrorBody, "description": "URL fetching disabled or URL not allowed"}},
        description="Disabled (403) unless the server was started with an allow-list (--allow-url PREFIX). Redirects are not followed.",
    )
    def search_url(body: UrlSearch) -> SearchResult:
        data = fetch(body.url, settings.url_allowlist, max_bytes=settings.max_upload_bytes, timeout=settings.url_timeout_s)
        return run_search(data, body.url, body.top_k, body.filters, body.domain, body.box)

    # -- products: reads --------------------------------------------------------
    def product_out(product_id: str) -> Product:
        rec = lens.get_product(product_id)
        images = [ProductImage(image_id=i, domain=d, url=f"/images/{i}") for i, d, _ in lens.product_images(product_id)]
        return Product(
            product_id=rec.product_id,
            title=rec.title,
            category=rec.category,
            category_source=rec.category_source,
            domain=rec.domain,
            domain_source=rec.domain_source,
            metadata=rec.metadata,
            images=images,
        )

    @app.get("/products", response_model=ProductPage, tags=["products"], summary="List products (by id), a page at a time",
             dependencies=reader, responses=READ_ERRORS)
    def list_products(
        offset: Annotated[int, Query(ge=0, le=2**62, description="products to skip")] = 0,
        limit: Annotated[int, Query(ge=1, le=settings.max_page, description="products in this page")] = 100,
    ) -> ProductPage:
        records = lens.list_products(offset, limit)
        items = []
        for rec in records:
            try:
                items.append(product_out(rec.product_id))
            except NotFoundError:
                continue  # deleted between the two reads
        return ProductPage(total=lens.count_products(), offset=offset, limit=limit, items=items)

    # -- products: writes (registered before the catch-all product path) ----------
    @contextmanager
    def photos_may_change(product_ids: Iterable[str]) -> Iterator[None]:
        """Around a write that may drop photos: their thumbnails go once no image has them (after the commit)."""
        before = state.thumbnails.sha1s_of(product_ids)
        try:
            yield
        finally:
            try:
                state.thumbnails.forget(before)
            except Exception:  # noqa: BLE001 - the write stands; the next start sweeps what is left
                log.exception("removing unused thumbnails failed")

    def report_out(report: IndexReport, products: Sequence[str]) -> WriteReport:
        d = report.to_dict()
        return WriteReport(products=list(products), **{k: d[k] for k in WriteReport.model_fields if k in d and k != "products"})

    @app.post(
        "/products",
        response_model=ProductWritten,
        status_code=201,
        tags=["products"],
        summary="Add (or replace) one product with its photos",
        dependencies=writer,
        responses={**WRITE_ERRORS, 200: {"model": ProductWritten, "description": "an existing product was replaced"}},
        description=(
            "multipart/form-data: a `product` part (JSON: product_id, title, category, domain, metadata) and one or more "
            "`photos` parts. The product gets exactly these photos. Every photo is checked before anything is written; "
            "the write is one transaction. 201 when the product is new, 200 when it replaced one."
        ),
    )
    def add_product(
        response: Response,
        product: Annotated[str, Form(description="the product's fields as JSON (see the ProductFields schema)")],
        photos: Annotated[list[UploadFile], File(description="the product's photos")],
    ) -> ProductWritten:
        fields = _parse_json(ProductFields, product, "product")
        uploads = _read_photos(photos, settings)
        existed = lens.store.get_product(fields.product_id) is not None
        with photos_may_change([fields.product_id]):
            report = lens.put_products([_input(fields, uploads)], max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels)
        state.dirty.set()
        state.metrics.writes.labels("add").inc()
        if existed:
            response.status_code = 200
        return ProductWritten(product=product_out(fields.product_id), report=report_out(report, [fields.product_id]))

    @app.post(
        "/products/batch",
        response_model=BatchWritten,
        tags=["products"],
        summary="Add (or replace) several products in one transaction",
        dependencies=writer,
        responses=WRITE_ERRORS,
        description=(
            "multipart/form-data: a `products` part (JSON array of products, each with `photos`: the file names of its "
            "uploaded `photos` parts) and the `photos` parts. All or nothing: one bad photo or product refuses the batch."
        ),
    )
    def add_products(
        products: Annotated[str, Form(description="JSON array of products (see the BatchProduct schema)")],
        photos: Annotated[list[UploadFile], File(description="all photos of the batch, named as the products refer to them")],
    ) -> BatchWritten:
        items = _parse_batch(products, settings.max_batch_products)
        uploads = _read_photos(photos, settings)
        by_name: dict[str, bytes] = {}
        for upload, data in zip(photos, uploads):
            name = upload.filename or ""
            if name in by_name:
                raise CatalogueError(f"two uploaded photos are named {name!r}: names must tell photos apart")
            by_name[name] = data
        inputs = []
        for item in items:
            missing = [n for n in item.photos if n not in by_name]
            if missing:
                raise CatalogueError(f"product {item.product_id!r} names photos that were not uploaded: {', '.join(missing[:5])}")
            inputs.append(_input(item, [by_name[n] for n in item.photos]))
        with photos_may_change(i.product_id for i in inputs):
            report = lens.put_products(inputs, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels)
        state.dirty.set()
        state.metrics.writes.labels("add").inc(len(inputs))
        ids = [i.product_id for i in inputs]
        return BatchWritten(products=[product_out(p) for p in ids], report=report_out(report, ids))

    @app.post(
        "/products/batch-delete",
        response_model=DeleteResult,
        tags=["products"],
        summary="Delete several products (one transaction)",
        dependencies=writer,
        responses=WRITE_ERRORS,
    )
    def delete_products(body: DeleteRequest) -> DeleteResult:
        ids = list(dict.fromkeys(body.product_ids))
        present = set(lens.store.get_products(ids))
        with photos_may_change(present):
            lens.delete_products(ids)
        state.dirty.set()
        state.metrics.writes.labels("delete").inc(len(present))
        return DeleteResult(deleted=[p for p in ids if p in present], missing=[p for p in ids if p not in present])

    @app.put(
        "/products/{product_id:path}/photos",
        response_model=ProductWritten,
        tags=["products"],
        summary="Replace a product's photos",
        dependencies=writer,
        responses={**WRITE_ERRORS, 404: {"model": ErrorBody, "description": "no such product"}},
        description="multipart/form-data with one or more `photos` parts: the product keeps its fields and gets exactly these photos.",
    )
    def set_photos(
        product_id: Annotated[str, PathParam(description="the product's id")],
        photos: Annotated[list[UploadFile], File(description="the product's new photos")],
    ) -> ProductWritten:
        lens.get_product(product_id)  # 404 before reading the photos
        uploads = _read_photos(photos, settings)
        with photos_may_change([product_id]):
            report = lens.set_photos(product_id, uploads, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels)
        state.dirty.set()
        state.metrics.writes.labels("photos").inc()
        return ProductWritten(product=product_out(product_id), report=report_out(report, [product_id]))

    @app.get(
        "/products/{product_id:path}",
        response_model=Product,
        tags=["products"],
        summary="Get one product",
        dependencies=reader,
        responses={**READ_ERRORS, 404: {"model": ErrorBody, "description": "no such product"}},
    )
    def get_product(product_id: Annotated[str, PathParam(description="the product's id")]) -> Product:
        return product_out(product_id)

    @app.patch(
        "/products/{product_id:path}",
        response_model=Product,
        tags=["products"],
        summary="Change a product's title, category or metadata (photos untouched)",
        dependencies=writer,
        responses={**WRITE_ERRORS, 404: {"model": ErrorBody, "description": "no such product"}},
    )
    def patch_product(product_id: Annotated[str, PathParam(description="the product's id")], body: Annotated[ProductPatch, Body()]) -> Product:
        given = body.model_fields_set
        kwargs: dict[str, Any] = {}
        if "title" in given:
            kwargs["title"] = body.title
        if "category" in given:
            kwargs["category"] = body.category
        lens.update_product(product_id, metadata=body.metadata, replace_metadata=body.replace_metadata, **kwargs)
        state.metrics.writes.labels("update").inc()
        return product_out(product_id)

    @app.delete(
        "/products/{product_id:path}",
        status_code=204,
        tags=["products"],
        summary="Delete one product and its photos from the index",
        dependencies=writer,
        responses={**WRITE_ERRORS, 404: {"model": ErrorBody, "description": "no such product"}},
    )
    def delete_product(product_id: Annotated[str, PathParam(description="the product's id")]) -> Response:
        with photos_may_change([product_id]):
            deleted = lens.delete_products([product_id])
        if deleted == 0:
            raise NotFoundError(f"no product {product_id!r}")
        state.dirty.set()
        state.metrics.writes.labels("delete").inc()
        return Response(status_code=204)

    # -- photos -----------------------------------------------------------------
    def photo_response(image_id: int) -> FileResponse:
        path = lens.image_file(image_id)
        if path is None:
            raise NotFoundError(f"no photo with image id {image_id}")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if not media.startswith("image/"):
            media = "application/octet-stream"
        cache = "private, max-age=3600" if settings.reads_need_key else "public, max-age=3600"  # no shared cache keeps a private photo
        return FileResponse(path, media_type=media, headers={"Cache-Control": cache})

    photo_doc: dict[int | str, dict[str, Any]] = {
        **READ_ERRORS,
        200: {"content": {"image/*": {}}, "description": "the photo"},
        404: {"model": ErrorBody, "description": "no such image"},
    }

    @app.get("/images/{image_id}", tags=["photos"], summary="A product photo, by image id", response_class=FileResponse,
             dependencies=reader, responses=photo_doc)
    def get_image(image_id: Annotated[int, PathParam(ge=0, le=2**62, description="an image id from a product's `images`")]) -> FileResponse:
        return photo_response(image_id)

    @app.get("/images/of-product/{product_id:path}", tags=["photos"], summary="A product's first photo", response_class=FileResponse,
             dependencies=reader, responses=photo_doc)
    def get_product_image(product_id: Annotated[str, PathParam(description="the product's id")]) -> FileResponse:
        images = lens.product_images(product_id)
        if not images:
            raise NotFoundError(f"no photo of product {product_id!r}")
        return photo_response(images[0][0])

    thumbnail_doc: dict[int | str, dict[str, Any]] = {
        **READ_ERRORS,
        200: {"content": {"image/jpeg": {}, "image/webp": {}}, "description": "the thumbnail (WebP when the request accepts image/webp)"},
        304: {"description": "not modified (If-None-Match names the current ETag)"},
        400: {"model": ErrorBody, "description": "a size that is not offered (code bad_size)"},
        404: {"model": ErrorBody, "description": "no such image"},
    }

    # Registered after /images/of-product/{id}: a product called "thumbnail" keeps its photo.
    @app.get("/images/{image_id}/thumbnail", tags=["photos"], summary="A product photo resized for a result card (cached)",
             response_class=Response, dependencies=reader, responses=thumbnail_doc, description=(
                 "The photo shrunk to `size` pixels on its longest side (never enlarged), EXIF orientation applied, as JPEG, "
                 "or WebP for a client that accepts it. Made on the first request and kept under `<store>/thumbnails/`, named "
                 "by the photo's content: search hits' `image_url` points here, with `v` naming the photo's version, so a "
                 "changed photo gets a new URL. `ETag` and `If-None-Match` (304) as usual."))
    def get_thumbnail(
        request: Request,
        image_id: Annotated[int, PathParam(ge=0, le=2**62, description="an image id (search hits' `image_url`, a product's `images`)")],
        size: Annotated[int, Query(description=f"longest side in pixels: one of {', '.join(map(str, SIZES))}",
                                   json_schema_extra={"enum": list(SIZES)})] = DEFAULT_SIZE,
        v: Annotated[str | None, Query(max_length=64, description="the photo's version, as `image_url` gives it (it only keys caches)")] = None,
    ) -> Response:
        if size not in SIZES:
            return error(400, "bad_size", f"thumbnail size {size} is not offered: ask for one of {', '.join(map(str, SIZES))}")
        sha1 = state.thumbnails.sha1(image_id)
        photo = None if sha1 is None else lens.image_file(image_id)
        if sha1 is None or photo is None:
            raise NotFoundError(f"no photo with image id {image_id}")
        media = media_type_for(request.headers.get("accept", ""))
        etag = state.thumbnails.etag(sha1, size, media)
        scope = "private" if settings.reads_need_key else "public"  # no shared cache keeps a private photo
        # A URL naming the photo's version never changes what it answers; any other is revalidated by its ETag.
        versioned = v is not None and len(v) >= 16 and sha1.startswith(v)
        headers = {"ETag": etag, "Vary": "Accept",
                   "Cache-Control": f"{scope}, max-age=86400, immutable" if versioned else f"{scope}, no-cache"}
        asked = {t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")}
        if etag in asked or "*" in asked:
            return Response(status_code=304, headers=headers)
        thumb = state.thumbnails.cached(sha1, size, media)
        headers["X-Thumbnail-Cache"] = "hit" if thumb is not None else "miss"
        if thumb is None:
            with state.search_slots:  # a decode, bounded like a search's
                thumb = state.thumbnails.cached(sha1, size, media) or state.thumbnails.make(photo, sha1, size, media)
        return Response(thumb.data, media_type=thumb.media_type, headers=headers)

    # -- operations -------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["operations"], summary="Liveness: the process answers")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Ready,
        tags=["operations"],
        summary="Readiness: models and indexes loaded, store readable",
        responses={503: {"model": Ready, "description": "starting, or the store is unavailable"}},
    )
    def readyz(request: Request) -> JSONResponse:
        def answer(status: Any, code: int = 200, **fields: Any) -> JSONResponse:
            ready = Ready(status=status, writes_enabled=settings.writes_enabled, reads_need_key=settings.reads_need_key, **fields)
            return JSONResponse(ready.model_dump(), status_code=code)

        if state.warm_error is not None:
            return answer("unavailable", 503, detail=state.warm_error)
        if not state.ready.is_set():
            return answer("starting", 503, detail="loading models and indexes")
        try:
            products, images = state.counts()
        except ShoplensError as err:
            return answer("unavailable", 503, detail=str(err))
        if read_problem(settings, presented_key(dict(request.headers.raw))) is not None:
            return answer("ready")  # the catalogue's size is for key holders
        return answer("ready", products=products, images=images)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response,
             dependencies=reader, responses={**READ_ERRORS, 200: {"content": {CONTENT_TYPE: {}}}})
    def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    # -- the web page -----------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> Response:
        # The cards' metadata fields, as an HTML-escaped JSON attribute the page's script reads.
        fields = html.escape(json.dumps(list(settings.card_fields)), quote=True)
        text = (STATIC / "index.html").read_text("utf-8").replace('name="shoplens-card-fields" content="[]"',
                                                                  f'name="shoplens-card-fields" content="{fields}"', 1)
        return Response(text, media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    # -- batch search, catalogue imports, Swagger UI: their own modules ------------
    routes_batch.register(app, state, run_search, reader)
    routes_imports.register(app, state, writer)
    docs_ui.register(app)

    # -- middleware: metrics (outermost) > CORS > guard (keys, body limit) > routes --
    def routes_needing(dependency: Any) -> list[Any]:
        return [r for r in app.router.routes if any(getattr(d, "call", None) is dependency for d in getattr(getattr(r, "dependant", None), "dependencies", []))]

    write_routes, read_routes = routes_needing(write_key), routes_needing(read_key)

    def access(scope: dict[str, Any]) -> str | None:
        if any(r.matches(scope)[0] == Match.FULL for r in write_routes):
            return "write"
        if any(r.matches(scope)[0] == Match.FULL for r in read_routes):
            return "read"
        return None

    app.add_middleware(Guard, settings=settings, access=access)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
        )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, route_of=lambda scope: _route_of(app, scope))
    return app


# -- helpers ----------------------------------------------------------------------
def _route_of(app: FastAPI, scope: dict[str, Any]) -> str:
    """The route template of a request (bounded label values for metrics)."""
    route = scope.get("route")
    if route is None:
        for candidate in app.router.routes:
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                route = candidate
                break
    return getattr(route, "path", None) or "<unmatched>"


def _detail(e: dict[str, Any]) -> dict[str, Any]:
    return {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}


def _expected_body(request: Request) -> str:
    path = request.url.path
    if path == "/search":
        return "send the photo as multipart/form-data in a part named 'photo' (curl -F photo=@shoe.jpg ...)"
    if path == "/products":
        return "send multipart/form-data with a 'product' part (JSON) and 'photos' parts"
    if path == "/products/batch":
        return "send multipart/form-data with a 'products' part (JSON array) and 'photos' parts"
    if path.endswith("/photos"):
        return "send multipart/form-data with 'photos' parts"
    return "see /openapi.json for the expected body"


def _upload_name(upload: UploadFile) -> str:
    name = "".join(c for c in (upload.filename or "upload") if c.isprintable())[:256]
    return name or "upload"


def _read_upload(upload: UploadFile, limit: int) -> bytes:
    size = getattr(upload, "size", None)
    if size is not None and size > limit:
        raise TooLarge(f"{_upload_name(upload)}: the photo is {size} bytes, over the limit of {limit}")
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{_upload_name(upload)}: the photo is over the limit of {limit} bytes")
    return data


def _read_photos(photos: list[UploadFile], settings: ServerSettings) -> list[bytes]:
    if not photos:
        raise CatalogueError("at least one photo is needed")
    if len(photos) > settings.max_photos_per_product * settings.max_batch_products:
        raise CatalogueError("too many photos in one request")
    return [_read_upload(p, settings.max_upload_bytes) for p in photos]


def _parse_json(model: Any, text: str, part: str) -> Any:
    try:
        return model.model_validate_json(text)
    except ValidationError as err:
        raise RequestValidationError([{**e, "loc": ("body", part, *e.get("loc", ()))} for e in err.errors(include_url=False)]) from None


def _parse_batch(text: str, limit: int) -> list[BatchProduct]:
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", "products"), "msg": "the 'products' part is not valid JSON"}]) from None
    if not isinstance(raw, list) or not raw:
        raise RequestValidationError([{"type": "list_type", "loc": ("body", "products"), "msg": "'products' must be a non-empty JSON array"}])
    if len(raw) > limit:
        raise RequestValidationError([{"type": "too_long", "loc": ("body", "products"), "msg": f"at most {limit} products per batch"}])
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(BatchProduct.model_validate(item))
        except ValidationError as err:
            raise RequestValidationError([{**e, "loc": ("body", "products", i, *e.get("loc", ()))} for e in err.errors(include_url=False)]) from None
    return out


def _input(fields: ProductFields, photos: list[bytes]) -> ProductInput:
    return ProductInput(fields.product_id, photos, fields.title, fields.category, fields.domain, dict(fields.metadata))
