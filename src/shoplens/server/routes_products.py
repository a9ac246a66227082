"""``/products``: list, read, add, replace, change and delete products with their photos.

Each write is one call of :class:`shoplens.Shoplens` (``put_products``,
``set_photos``, ``update_product``, ``delete_products``): one transaction,
every photo checked before anything is written. A write marks the vector
indexes to be saved and drops the thumbnails of photos no image has any more.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations, which name local settings.

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import Body, FastAPI, File, Form, Query, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from ..api import IndexReport, ProductInput
from ..errors import CatalogueError, NotFoundError
from .errors import READ_ERRORS, WRITE_ERRORS
from .models import (
    BatchProduct,
    BatchWritten,
    DeleteRequest,
    DeleteResult,
    ErrorBody,
    Product,
    ProductFields,
    ProductImage,
    ProductPage,
    ProductPatch,
    ProductWritten,
    WriteReport,
)
from .state import ServerState
from .uploads import read_photos

log = logging.getLogger(__name__)

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "no such product"}}


def register(app: FastAPI, state: ServerState) -> None:
    """Add the ``/products`` routes to ``app``: the fixed paths before the catch-all product path."""
    _add_list(app, state)
    _add_puts(app, state)
    _add_batch_delete(app, state)
    _add_set_photos(app, state)
    _add_one_product(app, state)


def product_out(state: ServerState, product_id: str) -> Product:
    lens = state.lens
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


@contextmanager
def photos_may_change(state: ServerState, product_ids: Iterable[str]) -> Iterator[None]:
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


def _add_list(app: FastAPI, state: ServerState) -> None:
    settings, lens = state.settings, state.lens

    @app.get("/products", response_model=ProductPage, tags=["products"], summary="List products (by id), a page at a time",
           dependencies=state.keys.reader, responses=READ_ERRORS)
    def list_products(
        offset: Annotated[int, Query(ge=0, le=2**62, description="products to skip")] = 0,
        limit: Annotated[int, Query(ge=1, le=settings.max_page, description="products in this page")] = 100,
    ) -> ProductPage:
        records = lens.list_products(offset, limit)
        items = []
        for rec in records:
            try:
                items.append(product_out(state, rec.product_id))
            except NotFoundError:
                continue  # deleted between the two reads
        return ProductPage(total=lens.count_products(), offset=offset, limit=limit, items=items)


def _add_puts(app: FastAPI, state: ServerState) -> None:
    """``POST /products`` and ``POST /products/batch``: products added or replaced with their photos."""
    settings, lens = state.settings, state.lens

    @app.post(
        "/products",
        response_model=ProductWritten,
        status_code=201,
        tags=["products"],
        summary="Add (or replace) one product with its photos",
        dependencies=state.keys.writer,
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
        uploads = read_photos(photos, settings)
        existed = lens.store.get_product(fields.product_id) is not None
        with photos_may_change(state, [fields.product_id]):
            report = lens.put_products([_input(fields, uploads)], **_photo_limits(state))
        state.dirty.set()
        state.metrics.writes.labels("add").inc()
        if existed:
            response.status_code = 200
        return ProductWritten(product=product_out(state, fields.product_id), report=report_out(report, [fields.product_id]))

    @app.post(
        "/products/batch",
        response_model=BatchWritten,
        tags=["products"],
        summary="Add (or replace) several products in one transaction",
        dependencies=state.keys.writer,
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
        inputs = _batch_inputs(_parse_batch(products, settings.max_batch_products), photos, read_photos(photos, settings))
        with photos_may_change(state, (i.product_id for i in inputs)):
            report = lens.put_products(inputs, **_photo_limits(state))
        state.dirty.set()
        state.metrics.writes.labels("add").inc(len(inputs))
        ids = [i.product_id for i in inputs]
        return BatchWritten(products=[product_out(state, p) for p in ids], report=report_out(report, ids))


def _add_batch_delete(app: FastAPI, state: ServerState) -> None:
    lens = state.lens
    @app.post(
        "/products/batch-delete",
        response_model=DeleteResult,
        tags=["products"],
        summary="Delete several products (one transaction)",
        dependencies=state.keys.writer,
        responses=WRITE_ERRORS,
    )
    def delete_products(body: DeleteRequest) -> DeleteResult:
        ids = list(dict.fromkeys(body.product_ids))
        present = set(lens.store.get_products(ids))
        with photos_may_change(state, present):
            lens.delete_products(ids)
        state.dirty.set()
        state.metrics.writes.labels("delete").inc(len(present))
        return DeleteResult(deleted=[p for p in ids if p in present], missing=[p for p in ids if p not in present])


def _add_set_photos(app: FastAPI, state: ServerState) -> None:
    settings, lens = state.settings, state.lens
    @app.put(
        "/products/{product_id:path}/photos",
        response_model=ProductWritten,
        tags=["products"],
        summary="Replace a product's photos",
        dependencies=state.keys.writer,
        responses={**WRITE_ERRORS, **NOT_FOUND},
        description="multipart/form-data with one or more `photos` parts: the product keeps its fields and gets exactly these photos.",
    )
    def set_photos(
        product_id: Annotated[str, PathParam(description="the product's id")],
        photos: Annotated[list[UploadFile], File(description="the product's new photos")],
    ) -> ProductWritten:
        lens.get_product(product_id)  # 404 before reading the photos
        uploads = read_photos(photos, settings)
        with photos_may_change(state, [product_id]):
            report = lens.set_photos(product_id, uploads, **_photo_limits(state))
        state.dirty.set()
        state.metrics.writes.labels("photos").inc()
        return ProductWritten(product=product_out(state, product_id), report=report_out(report, [product_id]))


def _add_one_product(app: FastAPI, state: ServerState) -> None:
    """``GET``, ``PATCH`` and ``DELETE /products/{id}``: registered last, the id may hold slashes."""
    lens = state.lens

    @app.get("/products/{product_id:path}", response_model=Product, tags=["products"], summary="Get one product",
           dependencies=state.keys.reader, responses={**READ_ERRORS, **NOT_FOUND})
    def get_product(product_id: Annotated[str, PathParam(description="the product's id")]) -> Product:
        return product_out(state, product_id)

    @app.patch("/products/{product_id:path}", response_model=Product, tags=["products"],
             summary="Change a product's title, category or metadata (photos untouched)",
             dependencies=state.keys.writer, responses={**WRITE_ERRORS, **NOT_FOUND})
    def patch_product(product_id: Annotated[str, PathParam(description="the product's id")], body: Annotated[ProductPatch, Body()]) -> Product:
        given = body.model_fields_set
        kwargs: dict[str, Any] = {}
        if "title" in given:
            kwargs["title"] = body.title
        if "category" in given:
            kwargs["category"] = body.category
        lens.update_product(product_id, metadata=body.metadata, replace_metadata=body.replace_metadata, **kwargs)
        state.metrics.writes.labels("update").inc()
        return product_out(state, product_id)

    @app.delete("/products/{product_id:path}", status_code=204, tags=["products"], summary="Delete one product and its photos from the index",
              dependencies=state.keys.writer, responses={**WRITE_ERRORS, **NOT_FOUND})
    def delete_product(product_id: Annotated[str, PathParam(description="the product's id")]) -> Response:
        with photos_may_change(state, [product_id]):
            deleted = lens.delete_products([product_id])
        if deleted == 0:
            raise NotFoundError(f"no product {product_id!r}")
        state.dirty.set()
        state.metrics.writes.labels("delete").inc()
        return Response(status_code=204)


# -- request bodies ---------------------------------------------------------------
def _photo_limits(state: ServerState) -> dict[str, int]:
    """The limits a written photo is checked against (``max_bytes``, ``max_pixels``)."""
    return {"max_bytes": state.settings.max_upload_bytes, "max_pixels": state.settings.max_pixels}


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


def _batch_inputs(items: list[BatchProduct], photos: list[UploadFile], uploads: list[bytes]) -> list[ProductInput]:
    """Each product of a batch with the uploaded photos it names (by file name)."""
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
    return inputs


def _input(fields: ProductFields, photos: list[bytes]) -> ProductInput:
    return ProductInput(fields.product_id, photos, fields.title, fields.category, fields.domain, dict(fields.metadata))
