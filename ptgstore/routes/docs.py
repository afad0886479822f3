"""`/openapi.json`, `/asyncapi.json` and `/docs`: the API described from the routes themselves
(openapi.py, asyncapi.py), an interactive page for REST and a page for the sockets, served from here."""
from __future__ import annotations

import base64
import hashlib
import html
import json
import os

import swagger_ui_bundle
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse

from .. import asyncapi as asyncapi_doc
from .. import openapi as openapi_doc
from .sockets_page import render

ROOT_PATH_KEY = "ptgstore.root_path"

def root_path(request: Request) -> str:
    """The prefix a proxy serves ptgstore under: the configured root path, else uvicorn's `--root-path`
    (kept by app.RootPathMiddleware)."""
    return request.app.state.settings.root_path or request.scope.get(ROOT_PATH_KEY, "")


async def openapi(request: Request) -> JSONResponse:
    """This document: the REST routes, generated from the routing table and the error table.

    ---
    responses:
      200: {description: an OpenAPI 3.0 document, content: {application/json: {schema: {type: object}}}}
    """
    return JSONResponse(openapi_doc.describe(request.app.routes, root_path(request)))


async def asyncapi(request: Request) -> JSONResponse:
    """The WebSocket routes as an AsyncAPI 3.0 document, generated from the routing table and the error table.

    Shown at `/docs/sockets`.
    ---
    responses:
      200: {description: an AsyncAPI 3.0 document, content: {application/json: {schema: {type: object}}}}
    """
    return JSONResponse(_sockets(request))


def _sockets(request: Request) -> dict:
    return asyncapi_doc.describe(request.app.routes, request.url.netloc or "127.0.0.1:8000", root_path(request))


async def sockets_page(request: Request) -> HTMLResponse:
    """The WebSocket routes (the AsyncAPI document) as a page: options, messages, close codes.

    ---
    responses:
      200: {description: the page, content: {text/html: {schema: {type: string}}}}
    """
    return HTMLResponse(render(_sockets(request), root_path(request)), headers={
        "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                                   "frame-ancestors 'none'",
        "x-content-type-options": "nosniff",
    })


# validatorUrl null: Swagger UI would otherwise fetch a badge from validator.swagger.io
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ptgstore API</title>
<link rel="stylesheet" href="{prefix}/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="{prefix}/docs/static/swagger-ui-bundle.js"></script>
<script>{script}</script>
</body></html>
"""
SCRIPT = 'window.ui = SwaggerUIBundle({{url: {spec}, dom_id: "#ui", persistAuthorization: true, validatorUrl: null}});'


def content_security_policy(script: str) -> str:
    """The page's policy: scripts from here and the one inline script (by its hash); Swagger UI sets
    inline styles and shows data: images."""
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return (f"default-src 'self'; script-src 'self' 'sha256-{digest}'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")


async def page(request: Request) -> HTMLResponse:
    """The REST API as an interactive page (Swagger UI, served from here: nothing from the internet).

    ---
    responses:
      200: {description: the page, content: {text/html: {schema: {type: string}}}}
    """
    prefix = root_path(request)
    spec = json.dumps(prefix + "/openapi.json").replace("<", "\\u003c")
    script = SCRIPT.format(spec=spec)
    return HTMLResponse(PAGE.format(prefix=html.escape(prefix), script=script), headers={
        "content-security-policy": content_security_policy(script), "x-frame-options": "DENY"})


# the two files the page loads; the bundle's own index.html (which fetches a demo spec from the
# internet) and the rest of the directory are not served
ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}


async def asset(request: Request) -> FileResponse:
    """A file the `/docs` page loads: `swagger-ui.css` or `swagger-ui-bundle.js`.

    ---
    path:
      name: {type: string, enum: [swagger-ui.css, swagger-ui-bundle.js]}
    responses:
      200:
        description: the file
        content: {text/css: {schema: {type: string}}, text/javascript: {schema: {type: string}}}
      404: any other name
    """
    name = request.path_params["name"]
    if name not in ASSETS:
        raise HTTPException(404, "Not Found")
    return FileResponse(os.path.join(swagger_ui_bundle.swagger_ui_path, name), media_type=ASSETS[name])
