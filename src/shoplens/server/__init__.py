"""The HTTP face: ``shoplens serve`` (FastAPI + uvicorn) and its web page.

Needs the ``[server]`` extra: ``pip install 'shoplens[server]'``.

>>> from shoplens import open_store
>>> from shoplens.server import ServerSettings, create_app
>>> app = create_app(open_store("my-store"), ServerSettings(api_key="..."))
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import MissingDependencyError
from .settings import ServerSettings

log = logging.getLogger(__name__)

for _module, _package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("python_multipart", "python-multipart"), ("prometheus_client", "prometheus_client")):
    try:
        __import__(_module)
    except ImportError:
        raise MissingDependencyError(_package, "server", "the HTTP server") from None

from .app import create_app  # noqa: E402 - after the check above, so a missing extra names its pip install


def serve(lens: Any, settings: ServerSettings | None = None, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``lens`` over HTTP until interrupted (the caller closes ``lens``)."""
    import uvicorn

    settings = settings or ServerSettings()
    app = create_app(lens, settings)
    log.info(
        "serving %s (%d products) on http://%s:%d; writes %s",
        lens.store.root,
        lens.count_products(),
        host,
        port,
        "enabled (API key set)" if settings.writes_enabled else "disabled (no API key configured)",
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug", timeout_graceful_shutdown=30)


__all__ = ["ServerSettings", "create_app", "serve"]
