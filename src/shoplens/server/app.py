"""The FastAPI application: a thin HTTP face over :class:`shoplens.Shoplens`.

``create_app(lens, settings)`` builds it; ``shoplens serve`` runs it with
uvicorn. Every handler does what the Python API does, nothing more: search a
photo, add / update / delete products (with their photos), read the
catalogue, serve product photos (and cached thumbnails) by image id, health, readiness, metrics and
the web page at ``/``. Each concern registers its routes from a module of its own
(``routes_*.py``); what they share is the :class:`~shoplens.server.state.ServerState`.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import Match

from .. import __version__
from ..api import Shoplens
from . import (
    docs_ui,
    routes_batch,
    routes_imports,
    routes_operations,
    routes_page,
    routes_photos,
    routes_products,
    routes_search,
    routes_text,
)
from .errors import add_exception_handlers
from .guard import Guard
from .metrics import MetricsMiddleware
from .settings import ServerSettings
from .state import ServerState

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Search by photo (intent gate → garment detection → per-region embedding → index search → rank filter → "
    "category entropy filter → category-aware ordering), with metadata filters applied inside the index search; "
    "add, update and delete products with their photos. Write endpoints need the API key "
    "(X-API-Key header or Authorization: Bearer); with no key configured on the server they answer 403. "
    "A server started with a read key (SHOPLENS_READ_KEY) also wants a key for search, products, photos and "
    "metrics: the read key or the write key; health, readiness, the web page and this schema stay open. "
    "Every error is JSON: {\"error\": message, \"code\": code}."
)


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
        description=DESCRIPTION,
        docs_url=None,  # FastAPI's Swagger UI loads from a CDN: docs_ui serves /docs from bundled files
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.shoplens = state
    add_exception_handlers(app)

    # The order matters where paths overlap: each module registers its fixed paths before its catch-alls.
    routes_search.register(app, state)
    routes_text.register(app, state)
    routes_products.register(app, state)
    routes_photos.register(app, state)
    routes_operations.register(app, state)
    routes_page.register(app, settings)
    routes_batch.register(app, state, partial(routes_search.run_search, state), state.keys.reader)
    routes_imports.register(app, state, state.keys.writer)
    docs_ui.register(app)

    _add_middleware(app, state)
    return app


def _add_middleware(app: FastAPI, state: ServerState) -> None:
    """Metrics (outermost) > CORS > guard (keys, body limit) > routes."""
    settings = state.settings

    def routes_needing(dependency: Any) -> list[Any]:
        return [r for r in app.router.routes if any(getattr(d, "call", None) is dependency for d in getattr(getattr(r, "dependant", None), "dependencies", []))]

    write_routes, read_routes = routes_needing(state.keys.write_key), routes_needing(state.keys.read_key)

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
