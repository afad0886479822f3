"""The errors of the Python client: each carries the server's reason (`ptgstore.client` exports them)."""
from __future__ import annotations

import httpx
from websockets.exceptions import ConnectionClosed

FORBIDDEN_PREFIX = "forbidden:"  # how the server's permission refusals begin (docs/protocol.md)
# close codes after which a pull or a pusher reconnects: going away, abnormal drop, store unavailable, restart
TRANSIENT_CLOSES = frozenset({1001, 1006, 1011, 1012, 1013})


class PtgError(Exception):
    """Anything ptgstore refused or could not do: `.detail` is the server's reason, `.status` its HTTP status."""

    def __init__(self, detail: str, status: int | None = None, hint: str = ""):
        super().__init__(f"{detail} ({hint})" if hint else detail)
        self.detail = detail
        self.status = status


class AuthError(PtgError):
    """No token, or a token or credentials the server refuses (HTTP 401/403)."""


class Forbidden(AuthError):
    """A valid token without the permission the call needs (HTTP 403): `.detail` names the stream or
    action and the missing permission."""


class NotFound(PtgError):
    """The stream or route does not exist."""


class BadRequest(PtgError):
    """The server refused the request as malformed or too large (HTTP 400, 413, 422)."""


class ServerError(PtgError):
    """The server failed or its store is unavailable (HTTP 5xx)."""


class Unreachable(PtgError):
    """No server answers at the URL."""


class StreamClosed(PtgError):
    """A WebSocket ended with a close `code` and `reason` (1007 malformed, 1008 policy, 1009 too big...)."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"websocket closed with {code}: {reason}" if reason else f"websocket closed with {code}")
        self.code = code
        self.reason = reason


class StreamForbidden(StreamClosed, Forbidden):
    """A WebSocket closed 1008 because the token lacks a permission (the reason names it)."""

    def __init__(self, code: int, reason: str):
        super().__init__(code, reason)
        self.status = 403


def error_for(status: int, detail: str) -> PtgError:
    """The error for an HTTP status and the server's reason."""
    kind: type[PtgError]
    if status == 403:
        kind = Forbidden
    elif status == 401:
        kind = AuthError
    elif status == 404:
        kind = NotFound
    elif status >= 500:
        kind = ServerError
    else:
        kind = BadRequest
    return kind(detail or f"HTTP {status}", status)


def detail_of(response: httpx.Response) -> str:
    """The server's reason in an error response: its JSON `detail`, else its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


def closed_error(exc: ConnectionClosed) -> StreamClosed:
    """A closed WebSocket as the error that names its close code and reason (1006 when it just dropped)."""
    close = exc.rcvd
    if close is None:
        return StreamClosed(1006, "connection dropped")
    if close.code == 1008 and close.reason.startswith(FORBIDDEN_PREFIX):
        return StreamForbidden(close.code, close.reason)
    return StreamClosed(close.code, close.reason)


