"""Health checks."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..store import StoreUnavailable


async def ping(request: Request) -> JSONResponse:
    """`true` when the store answers; 503 with the reason when it does not."""
    try:
        await request.app.state.store.ping()
    except StoreUnavailable as exc:
        return JSONResponse({"detail": str(exc)}, status_code=503)
    return JSONResponse(True)


async def ping_error(request: Request) -> JSONResponse:
    """A deliberate server error, to check how clients and proxies show one."""
    raise RuntimeError("deliberate error from /ping/error")
