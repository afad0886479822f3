"""HTTP error replies in the protocol's `{"detail": ...}` shape, and the request body limit."""
from __future__ import annotations

import logging

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
