"""GET /docs: Swagger UI over the OpenAPI document, with its script and stylesheet served from here, never a CDN.

FastAPI's own /docs page loads Swagger UI from a CDN, so it is blank on a network without internet. The files
come from the swagger-ui-bundle-v2 package (Swagger UI's release files, unchanged) and the page keeps the
strict Content-Security-Policy of the page at GET /: its one piece of our own script is a file, not inline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from html import escape
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # no py.typed; a pathlib.Path

from app.routes.ui import CONTENT_SECURITY_POLICY

DOCS_URL = "/docs"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}

# FastAPI's defaults for Swagger UI, less the online validator (it would send the schema to a third party).
INIT_SCRIPT = """\
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
});
"""

router = APIRouter(include_in_schema=False)


@router.get(DOCS_URL)
async def docs_page(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    openapi_url = escape(root + (request.app.openapi_url or "/openapi.json"))
    assets = escape(root + DOCS_URL)
    title = escape(f"{request.app.title} - API docs")
    html = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
<script src="{assets}/swagger-ui-bundle.js" defer></script>
<script src="{assets}/init.js" defer></script>
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
</body>
</html>
"""
    return HTMLResponse(html, headers={**PAGE_HEADERS, "Cache-Control": "no-cache"})


@router.get(f"{DOCS_URL}/init.js")
async def init_script() -> Response:
    return Response(INIT_SCRIPT, media_type="text/javascript", headers=PAGE_HEADERS)


def _asset(path: Path) -> Callable[[], Awaitable[FileResponse]]:
    async def serve_asset() -> FileResponse:
        return FileResponse(path, headers={"X-Content-Type-Options": "nosniff"})

    return serve_asset


for _name in ASSETS:
    router.add_api_route(f"{DOCS_URL}/{_name}", _asset(Path(swagger_ui_path, _name)), methods=["GET"])
