"""HTTP error replies in the protocol's `{"detail": ...}` shape, the request body limit, and the path guard."""
from __future__ import annotations

import logging
from urllib.parse import unquote_to_bytes

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger("ptgstore.errors")


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def bad_request(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


async def unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": str(exc)}, status_code=503)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this reply, so the server logs the traceback once
    return JSONResponse({"detail": "internal server error"}, status_code=500)


class BodyLimitMiddleware:
    """Refuse request bodies larger than `limit` bytes with 413, without reading them into memory."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                response = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, status_code=413)
                return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, f"request body larger than {self.limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def path_problem(scope) -> str | None:
    """Why a request path cannot name anything, or None.

    Both cases would otherwise reach another stream silently: the router's `$` matches
    before a trailing newline (`/data/cam%0A` would write to `cam`), and the server
    decodes bytes that are not UTF-8 as U+FFFD (`%FF` and `%FE` would share one stream).
    """
    raw = scope.get("raw_path")
    if raw is not None:
        try:
            unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return "the path is not valid UTF-8 once percent-decoded"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in scope.get("path", "")):
        return "the path contains a control character"
    return None


class PathGuardMiddleware:
    """Refuse paths that are not UTF-8 or hold control characters: 400, or close 1007 on a WebSocket."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        reason = path_problem(scope) if scope["type"] in ("http", "websocket") else None
        if reason is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await receive()  # the websocket.connect event
            # accepted first, so that the client can read why (as for any other malformed stream id)
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1007, "reason": reason})
            return
        await JSONResponse({"detail": reason}, status_code=400)(scope, receive, send)
