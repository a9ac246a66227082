"""``/healthz``, ``/readyz`` and ``/metrics``: what an orchestrator and a Prometheus scraper ask of the server."""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations.

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..errors import ShoplensError
from .errors import READ_ERRORS
from .guard import presented_key, read_problem
from .metrics import CONTENT_TYPE
from .models import Health, Ready
from .state import ServerState


def register(app: FastAPI, state: ServerState) -> None:
    """Add ``/healthz``, ``/readyz`` and ``/metrics`` to ``app``."""
    settings = state.settings

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
        return answer("ready", products=products, images=images, text_search=state.lens.text_domains())

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response,
           dependencies=state.keys.reader, responses={**READ_ERRORS, 200: {"content": {CONTENT_TYPE: {}}}})
    def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

