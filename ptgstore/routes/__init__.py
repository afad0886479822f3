"""Thin request handlers: parse, call the store or the hub, shape the reply."""
from __future__ import annotations

import logging
from typing import Iterable

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .. import errors
from ..permissions import NOTHING, Scope

log = logging.getLogger("ptgstore.routes")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def option(params, name: str, default=None):
    """A query option's value, or `default` when it is absent or empty: the original client sends
    `info=` for "not given", so an empty value means the default on every route and socket. An
    option given twice is malformed (which one would count?)."""
    values = params.getlist(name) if hasattr(params, "getlist") else [params[name]] if name in params else []
    if len(values) > 1:
        raise errors.BadOption(f"{name} is given {len(values)} times")
    return default if not values or values[0] == "" else values[0]


def query_bool(params, name: str, default: bool = False) -> bool:
    """A true/false query parameter (empty: the default); anything else is a malformed option naming it
    (400, or 1007 on a socket)."""
    raw = option(params, name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value == "":  # blanks only: empty, the default
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise errors.BadOption(f"{name} must be true or false, not {raw!r}")


def permissions(conn) -> Scope:
    """What the caller of a request or socket may do (nothing when no token was checked)."""
    caller = conn.scope.get("state", {}).get("caller")
    return caller.permissions if caller is not None else NOTHING


def require(conn, permission: str, sids: Iterable[str] | None = (), action: str = "do this") -> Scope:
    """The one permission check of every route: the caller's scope when it has `permission`
    ("read", "write" on each of `sids` (None: every stream), or "admin" to do `action`), else
    `Forbidden` (403, close 1008) naming the stream or action and the permission."""
    scope = permissions(conn)
    scope.require(permission, sids, action)
    return scope


async def close_socket(ws: WebSocket, code: int, reason: str) -> None:
    """Close `ws` with `code` and `reason` (accepting it first, so that the client can read them)."""
    try:
        if ws.application_state == WebSocketState.CONNECTING:
            await ws.accept()
        await ws.close(code, errors.short(reason))
    except (RuntimeError, OSError, WebSocketDisconnect):
        pass  # the client is already gone


async def serve_socket(ws: WebSocket, handler) -> None:
    """Run a socket handler and end the socket with the close code errors.TABLE gives any exception."""
    try:
        await handler(ws)
    except (WebSocketDisconnect, OSError):
        pass  # the client left (ASGI servers raise an OSError on a send after it did)
    except Exception as exc:
        refusal = errors.as_websocket(exc)
        if errors.reply_for(exc) is errors.UNEXPECTED:  # a bug: its traceback, once
            log.exception("websocket %s failed", ws.url.path)
        await close_socket(ws, refusal.code, refusal.reason)
