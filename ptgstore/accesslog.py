"""The structured access log: one `ptgstore.access` line per HTTP request and per WebSocket."""
from __future__ import annotations

import logging

import orjson

log = logging.getLogger("ptgstore.access")


def enabled() -> bool:
    return log.isEnabledFor(logging.INFO)


def request(scope, route: str, status: int, seconds: float) -> None:
    log.info("http method=%s route=%s path=%s status=%d duration_ms=%.1f user=%s client=%s",
             scope["method"], route, quote(scope["path"]), status, seconds * 1000, user(scope), client(scope))


def socket_open(scope, kind: str, streams: str) -> None:
    log.info("ws_open kind=%s streams=%s user=%s client=%s", kind, quote(streams), user(scope), client(scope))


def socket_refused(scope, kind: str, streams: str, code: int, reason: str) -> None:
    log.info("ws_refused kind=%s streams=%s client=%s code=%d reason=%s", kind, quote(streams), client(scope),
             code, quote(reason))


def socket_closed(scope, kind: str, streams: str, entries: int, size: int, seconds: float, code: int, by: str,
                  reason: str) -> None:
    log.info("ws_close kind=%s streams=%s user=%s client=%s entries=%d bytes=%d duration_s=%.3f "
             "code=%d by=%s reason=%s", kind, quote(streams), user(scope), client(scope), entries, size, seconds,
             code, by, quote(reason))


def quote(text: str) -> str:
    # JSON string quoting: a value with spaces or quotes stays one field for log parsers
    return orjson.dumps(text).decode()


def user(scope) -> str:
    caller = scope.get("state", {}).get("caller")
    return quote(caller.user) if caller is not None else "-"


def client(scope) -> str:
    address = scope.get("client")
    return f"{address[0]}:{address[1]}" if address else "-"
