"""Health checks."""
from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import as_http
from ..store import StoreUnavailable

log = logging.getLogger("ptgstore.errors")


async def ping(request: Request) -> JSONResponse:
    """`true` when the store answers; 503 with the reason when it does not.

    ---
    responses:
      200: {description: the store answers, content: {application/json: {schema: {type: boolean, enum: [true]}}}}
      503: Redis is unreachable (with the reason)
    """
    try:
        await request.app.state.store.ping()
    except StoreUnavailable as exc:
        return JSONResponse({"detail": str(exc)}, status_code=503)
    return JSONResponse(True)


async def ping_error(_request: Request) -> JSONResponse:
    """A deliberate server error, to check how clients and proxies show one.

    Always the same 500 as a real failure, logged as one line (nothing failed, so there is no
    traceback to show).
    ---
    responses:
      500: always
    """
    log.error("GET /ping/error: deliberate 500 (a check of how clients show server errors)")
    error = as_http(RuntimeError("deliberate"))
    return JSONResponse({"detail": error.detail}, status_code=error.status_code)
