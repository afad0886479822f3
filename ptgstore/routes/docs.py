"""`/openapi.json` and `/docs`: the REST API described, and an interactive page served from here."""
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

from .. import __version__

ROOT_PATH_KEY = "ptgstore.root_path"

WEBSOCKETS = """
WebSocket routes (OpenAPI cannot describe them; see docs/protocol.md in the repository for the full contract):

* `/data/{sid}/push?batch=false&ack=false&header=json|msgpack&offsets=auto|start|end` —
  unbatched: every binary message is one entry; batched (`batch=true` or sid `*`): messages
  alternate header (JSON text or MessagePack binary) and blob. With `ack=true` every stored
  message is answered with the new entry ids joined by `,`. Idempotent: `producer=ID&seq=N&ack=true`
  numbers the socket's messages from N; a message whose number the producer already stored is
  answered with the ids it was stored under and stores nothing (resend after a dropped socket).
* `/data/{sid}/pull?count=1&last_entry_id=$&ack=false&latest=false&timeout=MS&time_sync_id=SID&gaps=false&header=json|msgpack` —
  each delivery is a header `[[sid, entry_id, start_offset], ...]` then one binary blob.
* `/foxglove` (subprotocol `foxglove.websocket.v1`) — the Foxglove WebSocket protocol: every stream
  a channel (JPEG/PNG as foxglove.CompressedImage, JSON as json, depth/IMU layouts decoded, anything
  else raw; `images=protobuf` for protobuf images), advertised and unadvertised as streams come and go;
  clientPublish pushes entries.

Close codes: 1003 wrong message type, 1007 malformed header/offsets/ids/timestamps,
1008 policy (bad option; a producer's number older than the server remembers; `forbidden: ...` a
permission the token lacks), 1009 too big, 1011 store unavailable.
Tokens: `Authorization: Bearer`, `?token=`, or the `authorization` cookie. A refused handshake is an
HTTP 401 (token) or 403 (origin) with `{"detail": reason}`. Cookie-only POST/PUT/DELETE from another
site's page: 403.
"""


def _param(name, where, description, schema=None, required=False):
    return {"name": name, "in": where, "required": required or where == "path",
            "description": description, "schema": schema or {"type": "string"}}


SID = _param("sid", "path", "stream id; `a+b` for several streams where allowed")
BOOL = {"type": "boolean", "default": False}
DETAIL = {"type": "object", "properties": {"detail": {"type": "string"}}}


def _replies(ok_description, ok_content=None, *codes):
    replies = {"200": {"description": ok_description}}
    if ok_content:
        replies["200"]["content"] = ok_content
    for code, text in (("400", "malformed request"), ("401", "missing or invalid token"),
                       ("403", "the token lacks the permission: `forbidden: ...` names it"), *codes):
        replies[code] = {"description": text, "content": {"application/json": {"schema": DETAIL}}}
    return replies


JSON_ANY: dict[str, dict] = {"application/json": {"schema": {}}}

PATHS = {
    "/token": {"post": {
        "summary": "Log in: an OAuth2 password form in, a bearer token out (also set as the `authorization` cookie)",
        "security": [],
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "required": ["username", "password"],
            "properties": {"username": {"type": "string"}, "password": {"type": "string", "format": "password"}}}}}},
        "responses": _replies("token", {"application/json": {"schema": {"type": "object", "properties": {
            "access_token": {"type": "string"}, "token_type": {"type": "string"},
            "expires_in": {"type": "integer"}}}}}),
    }},
    "/token/derive": {"post": {
        "summary": "A narrower token for the calling token's user: every pattern asked for must be covered by "
                   "the caller's, admin only from an admin, ttl no longer than the caller lives (else 403)",
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "properties": {
                "read": {"type": "array", "items": {"type": "string"}, "description": "stream-id glob patterns"},
                "write": {"type": "array", "items": {"type": "string"}, "description": "stream-id glob patterns"},
                "admin": {"type": "boolean", "default": False},
                "ttl": {"type": "integer", "minimum": 1, "description": "seconds"}}}}}},
        "responses": _replies("the narrower token (no cookie)", JSON_ANY),
    }},
    "/token/scope": {"get": {
        "summary": "Who the token names and what it may do: read and write patterns, admin, expiry",
        "responses": _replies("user, read, write, admin, expires", JSON_ANY),
    }},
    "/ping": {"get": {"summary": "`true` when the store answers", "security": [],
                      "responses": _replies("the store answers", JSON_ANY, ("503", "Redis is unreachable"))}},
    "/ping/error": {"get": {"summary": "A deliberate 500 with a JSON error body", "security": [],
                            "responses": {"500": {"description": "always",
                                                  "content": {"application/json": {"schema": DETAIL}}}}}},
    "/streams": {"get": {
        "summary": "Sorted stream ids (streams with entries, and streams created by PUT)",
        "parameters": [_param("info", "query", "info objects instead of ids", BOOL)],
        "responses": _replies("stream ids or info objects", JSON_ANY),
    }},
    "/streams/{sid}": {
        "get": {"summary": "A stream's info: meta, length, first/last entry ids and times",
                "parameters": [SID, _param("report_error", "query", "400 (not 200 with `error`) when unknown", BOOL)],
                "responses": _replies("info object", JSON_ANY)},
        "put": {"summary": "Merge (or with `override=true` replace) the stream's metadata; `max_len` sets retention",
                "parameters": [SID, _param("override", "query", "replace instead of merge", BOOL)],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": _replies("the stored metadata", JSON_ANY)},
        "delete": {"summary": "Delete streams' entries and metadata (`a+b` for several)",
                   "parameters": [SID], "responses": _replies("the ids that existed", JSON_ANY)},
    },
    "/data/{sid}": {
        "get": {"summary": "Entries as one octet-stream body, located by the `entry-offset` header "
                           "`[[sid, entry_id, start_offset], ...]`",
                "parameters": [SID,
                               _param("last_entry_id", "query", "`*` newest, `$` none yet, `0`/`-` from the start, "
                                      "or an entry id (strictly after); one per stream joined by `+`",
                                      {"type": "string", "default": "*"}),
                               _param("count", "query", "at most this many per stream",
                                      {"type": "integer", "default": 1, "minimum": 1})],
                "responses": _replies("entries", {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}})},
        "post": {"summary": "Upload entries: every file part is one entry, in order; "
                            "sid `*` routes each part by its filename",
                 "parameters": [SID],
                 "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                     "type": "object", "properties": {"entries": {
                         "type": "array", "items": {"type": "string", "format": "binary"}}}}}}},
                 "responses": _replies("the new entry ids", JSON_ANY, ("413", "body larger than the maximum"))},
    },
    "/mjpeg/{sid}": {"get": {
        "summary": "A camera stream as MJPEG for an `<img>` tag (`multipart/x-mixed-replace; boundary=frame`): "
                   "the newest JPEG/PNG entries as they arrive, a stand-by image while there are none",
        "parameters": [SID,
                       _param("last_entry_id", "query", "start cursor, as on pull sockets",
                              {"type": "string", "default": "$"}),
                       _param("count", "query", "entries per read with latest=false",
                              {"type": "integer", "default": 1, "minimum": 1}),
                       _param("latest", "query", "each part is the newest image (skip backlog)",
                              {"type": "boolean", "default": True})],
        "responses": _replies("an endless multipart body", {"multipart/x-mixed-replace": {"schema": {}}}),
    }},
    "/status/streams": {"get": {
        "summary": "Every stream's summary (length, entries added, newest id, size and image type, max_len, "
                   "metadata) and the server clock `now`: a snapshot shared for up to a second",
        "responses": _replies("summaries", JSON_ANY),
    }},
    "/status": {"get": {
        "summary": "Server status: Redis reachable and which, open push/pull sockets, entry counters",
        "responses": _replies("status", JSON_ANY),
    }},
}


SPEC = {
    "openapi": "3.0.3",
    "info": {"title": "ptgstore", "version": __version__,
             "description": "Sensor frames over REST and WebSockets into Redis Streams.\n" + WEBSOCKETS},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    "security": [{"bearer": []}],
    "paths": PATHS,
}


def root_path(request: Request) -> str:
    """The prefix a proxy serves ptgstore under: the configured root path, else uvicorn's `--root-path`
    (kept by app.RootPathMiddleware)."""
    return request.app.state.settings.root_path or request.scope.get(ROOT_PATH_KEY, "")


async def openapi(request: Request) -> JSONResponse:
    prefix = root_path(request)
    return JSONResponse(dict(SPEC, servers=[{"url": prefix or "/"}]) if prefix else SPEC)


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
    prefix = root_path(request)
    spec = json.dumps(prefix + "/openapi.json").replace("<", "\\u003c")
    script = SCRIPT.format(spec=spec)
    return HTMLResponse(PAGE.format(prefix=html.escape(prefix), script=script), headers={
        "content-security-policy": content_security_policy(script), "x-frame-options": "DENY"})


# the two files the page loads; the bundle's own index.html (which fetches a demo spec from the
# internet) and the rest of the directory are not served
ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}


async def asset(request: Request) -> FileResponse:
    name = request.path_params["name"]
    if name not in ASSETS:
        raise HTTPException(404, "Not Found")
    return FileResponse(os.path.join(swagger_ui_bundle.swagger_ui_path, name), media_type=ASSETS[name])
