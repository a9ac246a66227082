"""Swagger UI at ``/docs``, from files the server serves itself (no CDN).

FastAPI's own ``/docs`` page loads Swagger UI from a CDN, which the server's
Content-Security-Policy (``script-src 'self'``) would block and which a
machine without internet cannot reach. This page loads Swagger UI's script
and stylesheet from ``/docs/assets/``, copied from the ``fastapi-offline``
package (part of the ``[server]`` extra), and starts it with a script of its
own (no inline script, so the policy stays strict). Swagger UI's online
validator badge is switched off: nothing leaves the server. Without the
package, ``/docs`` answers 404 with the ``pip install`` that brings it.
"""

from __future__ import annotations

import html
from importlib import util
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

#: The files of Swagger UI the page uses, and their media types.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
PACKAGE = "fastapi_offline"

INIT_JS = """\
// Starts Swagger UI on this server's OpenAPI schema (a file, not an inline script: the page's CSP allows only 'self').
window.ui = SwaggerUIBundle({
  url: document.querySelector('meta[name="shoplens-openapi"]').content,
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout",
});
"""


def assets_dir() -> Path | None:
    """The folder holding Swagger UI's files, or None when ``fastapi-offline`` is not installed."""
    spec = util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if all((folder / name).is_file() for name in ASSETS) else None


def page(root: str, openapi_url: str) -> str:
    base = html.escape(f"{root}/docs/assets", quote=True)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="shoplens-openapi" content="{html.escape(root + openapi_url, quote=True)}">
<title>shoplens API</title>
<link rel="icon" href="{base}/favicon.png">
<link rel="stylesheet" href="{base}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{base}/swagger-ui-bundle.js"></script>
<script src="{base}/init.js"></script>
</body>
</html>
"""


def register(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/docs/assets/*`` (open, like ``/openapi.json``)."""
    folder = assets_dir()
    openapi_url = app.openapi_url or "/openapi.json"
    missing = ("Swagger UI needs the 'fastapi-offline' package, which ships its files: pip install 'shoplens[server]' "
               f"(the API is described at {openapi_url} meanwhile)")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> Response:
        if folder is None:
            return JSONResponse({"error": missing, "code": "not_found"}, status_code=404)
        return Response(page(request.scope.get("root_path", ""), openapi_url), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def asset(name: str) -> Any:
        if folder is None:
            return JSONResponse({"error": missing, "code": "not_found"}, status_code=404)
        if name == "init.js":
            return Response(INIT_JS, media_type="text/javascript; charset=utf-8", headers={"Cache-Control": "no-cache"})
        if name not in ASSETS:
            return JSONResponse({"error": f"no such file: /docs/assets/{name}", "code": "not_found"}, status_code=404)
        return FileResponse(folder / name, media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
