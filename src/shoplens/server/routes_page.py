"""``/``: the web page (search by photo, result cards), with the card fields the server was started with."""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations.

import html
import json
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from .settings import ServerSettings

#: The page's script, styles and images, served under ``/static``.
STATIC = resources.files("shoplens.server") / "static"


def register(app: FastAPI, settings: ServerSettings) -> None:
    """Add the web page ``/`` of a server started with ``settings`` to ``app``, and its files under ``/static``."""

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        # The cards' metadata fields, as an HTML-escaped JSON attribute the page's script reads.
        fields = html.escape(json.dumps(list(settings.card_fields)), quote=True)
        text = (STATIC / "index.html").read_text("utf-8").replace('name="shoplens-card-fields" content="[]"',
                                                                  f'name="shoplens-card-fields" content="{fields}"', 1)
        return Response(text, media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
