"""ASGI middleware that times every request and follows every WebSocket from accept to close,
for the counters (`ptgstore.metrics`) and the access log (`ptgstore.accesslog`)."""
from __future__ import annotations

import time

import orjson
from starlette.routing import Match, WebSocketRoute

from . import accesslog
from .routing import endpoints
from .metrics import CLOSE_CODES, CLOSE_ERRORS, HTTP_ERRORS, Metrics

SOCKET_KEY = "ptgstore.socket"
COUNT_EVERY = 1.0  # seconds between updates of a socket's entry counters
SHUTDOWN_REASON = "server shutting down"
# set on a `websocket.disconnect` event that the server made up itself (a shutdown), not the client
SERVER_INITIATED = "ptgstore.server_initiated"


class SocketStats:
    """One WebSocket's counts, duration and close, for its metrics and its log lines."""

    __slots__ = ("metrics", "kind", "streams", "scope", "started", "accepted", "entries", "bytes",
                 "code", "reason", "by", "_entries", "_bytes", "_counted", "_counted_at", "__weakref__")

    def __init__(self, metrics: Metrics, kind: str, streams: str, scope):
        self.metrics = metrics
        self.kind = kind
        self.streams = streams
        self.scope = scope
        self.started = time.monotonic()
        self.accepted = False
        self.entries = self.bytes = 0
        self.code: int | None = None
        self.reason = ""
        self.by = ""
        counters = metrics.entry_counters("websocket", streams)
        self._entries, self._bytes = counters[:2] if kind == "push" else counters[2:]
        self._counted = (0, 0)  # entries and bytes already in the counters
        self._counted_at = 0.0
        metrics.open_socket_stats.add(self)

    def add(self, count: int, size: int) -> None:
        """Count entries stored (push) or delivered (pull) on this socket. They reach the counters
        at most COUNT_EVERY later (at once for a scrape by this process): counting every message of
        a wide fan-out would cost a noticeable share of its time."""
        self.entries += count
        self.bytes += size
        if time.monotonic() - self._counted_at >= COUNT_EVERY:
            self.count()

    def count(self) -> None:
        """Bring the counters up to date with this socket."""
        entries, nbytes = self._counted
        if self.entries != entries:
            self._entries.inc(self.entries - entries)
            self._bytes.inc(self.bytes - nbytes)
            self._counted = (self.entries, self.bytes)
        self._counted_at = time.monotonic()

    def accept(self) -> None:
        self.accepted = True
        self.metrics.sockets.labels(self.kind).inc()
        self.metrics.open_sockets.labels(self.kind).inc()
        if accesslog.enabled():
            accesslog.socket_open(self.scope, self.kind, self.streams)

    def closed(self, code: int, reason: str, by: str) -> None:
        if self.code is None:  # the first close is the one that ended the socket
            self.code, self.reason, self.by = code, reason or "", by

    def finish(self) -> None:
        self.count()
        self.metrics.open_socket_stats.discard(self)
        code = self.code if self.code is not None else 1006
        if not self.accepted:
            # refused at the handshake: a close code, or the HTTP status of a denial response
            reason = HTTP_ERRORS.get(code, "refused") if code < 1000 else CLOSE_ERRORS.get(code, "refused")
            self.metrics.errors.labels(reason).inc()
            accesslog.socket_refused(self.scope, self.kind, self.streams, code, self.reason)
            return
        self.metrics.open_sockets.labels(self.kind).dec()
        self.metrics.closes.labels(self.kind, str(code) if code in CLOSE_CODES else "other", self.by or "none").inc()
        if self.by == "server" and code in CLOSE_ERRORS:
            self.metrics.errors.labels(CLOSE_ERRORS[code]).inc()
        if accesslog.enabled():
            accesslog.socket_closed(self.scope, self.kind, self.streams, self.entries, self.bytes,
                                    time.monotonic() - self.started, code, self.by or "none", self.reason)


def _ignore(count: int, size: int) -> None:
    """The tally of a socket served without Instrumentation."""


def socket_tally(ws):
    """The function a socket handler calls with (entries, bytes) after each batch."""
    stats = ws.scope.get(SOCKET_KEY)
    return stats.add if stats is not None else _ignore


def _detail(body: bytes) -> str:
    try:
        detail = orjson.loads(body).get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return detail if isinstance(detail, str) else ""


class Instrumentation:
    """Times HTTP requests by route template and follows WebSockets from accept to close."""

    def __init__(self, app, metrics: Metrics, routes, access_log: bool = True):
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.socket_routes = [route for route in routes if isinstance(route, WebSocketRoute)]
        # the router leaves the endpoint it chose in the scope: its template is one lookup away
        self.templates = {getattr(route, "endpoint", None) or getattr(route, "app", None): route.path_format
                          for route in routes}
        self.templates.update({handler: route.path_format for route in routes for handler in endpoints(route).values()})
        self.access_log = access_log

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            return await self._http(scope, receive, send)
        if scope["type"] == "websocket":
            return await self._socket(scope, receive, send)
        return await self.app(scope, receive, send)

    def _route(self, scope, routes) -> tuple[str, dict]:
        """The route template (bounded, unlike raw paths) and path parameters of a request."""
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            scope = dict(scope, path=path.rstrip("/") or "/")
        partial = None
        for route in routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return route.path_format, child.get("path_params", {})
            if match is Match.PARTIAL and partial is None:
                partial = route.path_format, child.get("path_params", {})
        return partial or ("unmatched", {})

    async def _http(self, scope, receive, send):
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception becomes a 500 further out

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            route = self.templates.get(scope.get("endpoint")) or self._route(scope, self.routes)[0]
            self.metrics.request_done(scope["method"], route, status, seconds)
            if self.access_log and accesslog.enabled():
                accesslog.request(scope, route, status, seconds)

    async def _socket(self, scope, receive, send):
        route, params = self._route(scope, self.socket_routes)
        kind = "push" if route.endswith("/push") else "pull" if route.endswith("/pull") else \
            "foxglove" if route == "/foxglove" else "other"
        stats = SocketStats(self.metrics, kind, params.get("sid", ""), scope)
        scope = dict(scope)
        scope[SOCKET_KEY] = stats

        async def sending(message):
            kind_of = message["type"]
            if kind_of == "websocket.accept":
                stats.accept()
            elif kind_of == "websocket.close":
                stats.closed(message.get("code", 1000), message.get("reason", ""), "server")
            elif kind_of == "websocket.http.response.start":
                stats.closed(message["status"], "", "server")
            elif kind_of == "websocket.http.response.body" and not stats.reason:
                stats.reason = _detail(message.get("body", b""))
            await send(message)

        async def receiving():
            message = await receive()
            if message["type"] == "websocket.disconnect":
                by = "server" if message.get(SERVER_INITIATED) else "client"
                stats.closed(message.get("code", 1005), message.get("reason", ""), by)
            return message

        try:
            await self.app(scope, receiving, sending)
        finally:
            stats.finish()
