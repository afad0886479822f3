"""What the service is doing: Prometheus metrics, the structured access log, and `/metrics`.

`Metrics` owns the counters; `Instrumentation` (ASGI middleware) times every request,
follows every WebSocket from accept to close and writes one log line per request and
per socket; handlers only bump entry counts through `socket_tally` / `Metrics.entries`.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import sys
import time
import weakref

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, WebSocketRoute

from .auth import AuthError, find_token

log = logging.getLogger("ptgstore.access")

# REST calls take from a millisecond (ping) to seconds (a 16 MiB upload on a slow link)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# one Redis command or script on loopback is tens of microseconds; a pool wait can be seconds
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})
# close codes worth a label of their own; any other (clients may send 3000-4999) is "other"
CLOSE_CODES = frozenset({1000, 1001, 1003, 1005, 1006, 1007, 1008, 1009, 1011, 1012})
HTTP_ERRORS = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large", 500: "internal", 503: "unavailable"}
CLOSE_ERRORS = {1003: "unsupported", 1007: "bad_request", 1008: "policy", 1009: "too_large",
                1011: "server_error"}
SHUTDOWN_REASON = "server shutting down"
SOCKET_KEY = "ptgstore.socket"
DATA_SEND_KEY = "ptgstore.data_send"
COUNT_EVERY = 1.0  # seconds between updates of a socket's entry counters


def _use_multiprocess_dir(path: str) -> None:
    """Point prometheus_client at the directory the worker processes share.

    prometheus_client chooses its value store when it is first imported, so this
    must run before that; the CLI also sets it before it starts the workers.
    """
    os.makedirs(path, exist_ok=True)
    if "prometheus_client" not in sys.modules:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    elif os.environ.get("PROMETHEUS_MULTIPROC_DIR") != path:
        logging.getLogger("ptgstore").warning(
            "PTGSTORE_METRICS_DIR is set but prometheus_client was imported before it: "
            "metrics of this process are not shared with other workers")


class Metrics:
    """The service's Prometheus metrics, in one registry (or one directory shared by workers)."""

    def __init__(self, settings):
        self.directory = settings.metrics_dir
        if self.directory:
            _use_multiprocess_dir(self.directory)
        import prometheus_client as prom  # noqa: PLC0415 - after the multiprocess directory is chosen

        self.public = settings.metrics_public
        self.token = settings.metrics_token
        self.stream_labels = settings.metrics_stream_labels
        self.registry = prom.CollectorRegistry()
        # in multiprocess mode values live in files and a fresh collector reads them at each scrape
        target = None if self.directory else self.registry
        if target is not None:
            prom.ProcessCollector(registry=target)
        entry_labels = ("via", "stream") if self.stream_labels else ("via",)

        def counter(name, text, labels=()):
            return prom.Counter(name, text, labels, registry=target)

        self.entries_in = counter("ptgstore_entries_pushed", "Entries stored (WebSocket push or REST upload)",
                                  entry_labels)
        self.bytes_in = counter("ptgstore_bytes_pushed", "Entry bytes stored", entry_labels)
        self.entries_out = counter("ptgstore_entries_pulled", "Entries delivered (WebSocket pull or REST read)",
                                   entry_labels)
        self.bytes_out = counter("ptgstore_bytes_pulled", "Entry bytes delivered", entry_labels)
        self.requests = counter("ptgstore_http_requests", "HTTP requests by route template and status",
                                ("method", "route", "status"))
        self.latency = prom.Histogram("ptgstore_http_request_duration_seconds",
                                      "HTTP request latency by route template", ("method", "route"),
                                      buckets=LATENCY_BUCKETS, registry=target)
        self.redis_latency = prom.Histogram("ptgstore_redis_roundtrip_seconds",
                                            "Time of one store call to Redis (one round trip, pipeline or script)",
                                            ("op",), buckets=REDIS_BUCKETS, registry=target)
        self.open_sockets = prom.Gauge("ptgstore_open_sockets", "WebSockets open now", ("kind",),
                                       multiprocess_mode="livesum", registry=target)
        self.sockets = counter("ptgstore_sockets", "WebSockets accepted", ("kind",))
        self.closes = counter("ptgstore_socket_closes", "WebSocket closes by code and by which side",
                              ("kind", "code", "by"))
        self.errors = counter("ptgstore_errors", "Refused or failed requests and sockets, by reason", ("reason",))
        self.open_socket_stats: weakref.WeakSet = weakref.WeakSet()  # brought up to date at each scrape
        self._redis_children: dict = {}
        self._entry_children: dict = {}
        self._request_children: dict = {}
        # zeros from the start, so a first scrape already lists what will move
        for kind in ("push", "pull"):
            self.open_sockets.labels(kind)
            self.sockets.labels(kind)
        if not self.stream_labels:
            for via in ("websocket", "http"):
                self.entry_counters(via, "")

    # -- counting --------------------------------------------------------------------------------

    def entry_counters(self, via: str, stream: str):
        """The (entries, bytes) in and out counter children for one socket or request."""
        labels = (via, stream) if self.stream_labels else (via,)
        children = self._entry_children.get(labels)
        if children is None:  # prometheus_client keeps every child anyway: this map adds no growth
            children = self._entry_children[labels] = (
                self.entries_in.labels(*labels), self.bytes_in.labels(*labels),
                self.entries_out.labels(*labels), self.bytes_out.labels(*labels))
        return children

    def entries(self, request: Request, pushed: bool, count: int, size: int) -> None:
        """Count entries a REST request stored or delivered."""
        counters = self.entry_counters("http", request.path_params.get("sid", ""))
        entries, nbytes = counters[:2] if pushed else counters[2:]
        entries.inc(count)
        nbytes.inc(size)

    def redis_roundtrip(self, op: str, seconds: float) -> None:
        histogram = self._redis_children.get(op)
        if histogram is None:
            histogram = self._redis_children[op] = self.redis_latency.labels(op)
        histogram.observe(seconds)

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        # label lookups cost more than the counting: children are kept per (bounded) label set
        method = method if method in METHODS else "other"  # clients may invent methods
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            error = self.errors.labels(HTTP_ERRORS.get(status, f"http_{status}")) if status >= 400 else None
            children = self._request_children[key] = (
                self.requests.labels(method, route, str(status)), self.latency.labels(method, route), error)
        count, latency, error = children
        count.inc()
        latency.observe(seconds)
        if error is not None:
            error.inc()

    # -- exposition ------------------------------------------------------------------------------

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition format the scraper accepts (Prometheus text 0.0.4 unless it asks for
        another): this process's registry, or the sum over all workers."""
        import prometheus_client as prom  # noqa: PLC0415
        from prometheus_client import exposition, multiprocess  # noqa: PLC0415

        registry = self.registry
        if self.directory:
            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.directory)
        encode, content_type = exposition.choose_encoder(accept)
        return encode(registry), content_type

    def may_scrape(self, scope, authenticator) -> bool:
        """Everyone when configured public, else a metrics token or an API token (from any client:
        a proxy on the same host would make every client look local)."""
        if self.public:
            return True
        token, _ = find_token(scope)
        if token is None:
            return False
        if self.token and hmac.compare_digest(token.encode(), self.token.encode()):
            return True
        try:
            authenticator.verify(token)
        except AuthError:
            return False
        return True

    def close(self) -> None:
        """Forget this process's live gauges (worker exit), so sums cover running workers only."""
        if self.directory:
            from prometheus_client import multiprocess  # noqa: PLC0415

            multiprocess.mark_process_dead(os.getpid(), self.directory)


async def scrape(request: Request) -> Response:
    """`GET /metrics`: Prometheus text format."""
    metrics: Metrics = request.app.state.metrics
    if not metrics.may_scrape(request.scope, request.app.state.authenticator):
        return JSONResponse({"detail": "metrics need a token: PTGSTORE_METRICS_TOKEN or an API token"},
                            status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
    for stats in list(metrics.open_socket_stats):
        stats.count()
    body, content_type = await asyncio.to_thread(metrics.render, request.headers.get("accept"))
    return Response(body, headers={"content-type": content_type})


# -- per socket -----------------------------------------------------------------------------------

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
        at most a second later (at once for a scrape by this process): a fan-out to a thousand
        sockets would otherwise spend a tenth of its time counting."""
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
        if log.isEnabledFor(logging.INFO):
            log.info("ws_open kind=%s streams=%s user=%s client=%s", self.kind, _quote(self.streams),
                     _user(self.scope), _client(self.scope))

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
            log.info("ws_refused kind=%s streams=%s client=%s code=%d reason=%s", self.kind,
                     _quote(self.streams), _client(self.scope), code, _quote(self.reason))
            return
        self.metrics.open_sockets.labels(self.kind).dec()
        self.metrics.closes.labels(self.kind, str(code) if code in CLOSE_CODES else "other", self.by or "none").inc()
        if self.by == "server" and code in CLOSE_ERRORS:
            self.metrics.errors.labels(CLOSE_ERRORS[code]).inc()
        if log.isEnabledFor(logging.INFO):
            log.info("ws_close kind=%s streams=%s user=%s client=%s entries=%d bytes=%d duration_s=%.3f "
                     "code=%d by=%s reason=%s", self.kind, _quote(self.streams), _user(self.scope),
                     _client(self.scope), self.entries, self.bytes, time.monotonic() - self.started, code,
                     self.by or "none", _quote(self.reason))


def _noop(count: int, size: int) -> None:
    pass


def data_send(scope, send):
    """The send for `websocket.send` messages of an accepted socket: the server's own when this
    middleware is in front (a third cheaper per message than through the wrappers), else `send`."""
    return scope.get(DATA_SEND_KEY, send)


def socket_tally(ws):
    """The function a socket handler calls with (entries, bytes) after each batch."""
    stats = ws.scope.get(SOCKET_KEY)
    return stats.add if stats is not None else _noop


def _detail(body: bytes) -> str:
    try:
        detail = orjson.loads(body).get("detail")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return detail if isinstance(detail, str) else ""


def _quote(text: str) -> str:
    return orjson.dumps(text).decode()


def _user(scope) -> str:
    caller = scope.get("state", {}).get("caller")
    return _quote(caller.user) if caller is not None else "-"


def _client(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


# -- the middleware -------------------------------------------------------------------------------

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
            if self.access_log and log.isEnabledFor(logging.INFO):
                log.info("http method=%s route=%s path=%s status=%d duration_ms=%.1f user=%s client=%s",
                         scope["method"], route, _quote(scope["path"]), status, seconds * 1000,
                         _user(scope), _client(scope))

    async def _socket(self, scope, receive, send):
        route, params = self._route(scope, self.socket_routes)
        kind = "push" if route.endswith("/push") else "pull" if route.endswith("/pull") else "other"
        stats = SocketStats(self.metrics, kind, params.get("sid", ""), scope)
        scope = dict(scope)
        scope[SOCKET_KEY] = stats
        # data messages need no watching (handlers count them): they may skip the wrappers below
        scope[DATA_SEND_KEY] = send

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
                by = "server" if message.get("reason") == SHUTDOWN_REASON else "client"
                stats.closed(message.get("code", 1005), message.get("reason", ""), by)
            return message

        try:
            await self.app(scope, receiving, sending)
        finally:
            stats.finish()
