"""How the server answers an error: always JSON, ``{"error": message, "code": code}``, with the status of its kind."""

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (
    BadBoxError,
    BadImageError,
    CatalogueError,
    ConfigError,
    FilterError,
    MissingDependencyError,
    NoTextModelError,
    NotFoundError,
    ShoplensError,
    StoreError,
    UnknownModelError,
)
from .fetch import FetchFailed, FetchRefused, FetchTooLarge
from .models import ErrorBody

log = logging.getLogger(__name__)

#: The error answers of the schema (``responses=``): of any route, of a read, of a write.
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


#: The POST routes whose body is JSON; every other POST and PUT takes multipart/form-data (a photo upload).
JSON_BODY_PATHS = frozenset({"/products/batch-delete", "/search/url", "/search/text"})


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
    (NoTextModelError, 400, "no_text_model"),
    (MissingDependencyError, 501, "missing_dependency"),
    (StoreError, 503, "store_unavailable"),
    (ShoplensError, 400, "error"),
]


def error(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "code": code}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def add_exception_handlers(app: FastAPI) -> None:
    """Answer HTTP errors, invalid requests, the library's errors and anything else as :func:`error` does."""

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
        wants_form = request.url.path not in JSON_BODY_PATHS
        if body_missing and request.method in ("POST", "PUT") and wants_form and not ctype.startswith("multipart/form-data"):
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
