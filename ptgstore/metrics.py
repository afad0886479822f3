"""The service's Prometheus counters and `/metrics`.

`Metrics` owns the counters; `ptgstore.instrumentation` feeds them from every request and
socket; handlers only bump entry counts through `socket_tally` / `Metrics.entries`.
"""
from __future__ import annotations

import asyncio
import glob
import hmac
import logging
import os
import sys
import weakref

from starlette.requests import Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from .auth import AuthError, find_token
from .settings import export_prometheus_dir, prometheus_dir

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


def _use_multiprocess_dir(path: str) -> None:
    """Point prometheus_client at the directory the worker processes share.

    prometheus_client chooses its value store when it is first imported, so this
    must run before that; the CLI also sets it before it starts the workers.
    """
    os.makedirs(path, exist_ok=True)
    if "prometheus_client" not in sys.modules:
        export_prometheus_dir(path)
    elif prometheus_dir() != path:
        logging.getLogger("ptgstore").warning(
            "PTGSTORE_METRICS_DIR is set but prometheus_client was imported before it: "
            "metrics of this process are not shared with other workers")


class Metrics:
    """The service's Prometheus metrics, in one registry (or one directory shared by workers)."""

    def __init__(self, settings):
        self.directory = settings.metrics_dir
        if self.directory:
            _use_multiprocess_dir(self.directory)
        import prometheus_client as prom  # after the multiprocess directory is chosen

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
        self.foxglove_dropped = counter("ptgstore_foxglove_dropped",
                                        "Messages a slow Foxglove client did not get (newer ones took their place)")
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

    def _source(self):
        """What to collect: this process's registry, or the sum over all workers."""
        return _Workers(self.directory) if self.directory else self.registry

    def families(self) -> list:
        """The metric families now (blocking: call it off the event loop), of `_source()`."""
        return list(self._source().collect())

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition format the scraper accepts (Prometheus text 0.0.4 unless it asks for
        another), of `families()` (blocking: call it off the event loop)."""
        from prometheus_client import exposition

        encode, content_type = exposition.choose_encoder(accept or "")
        return encode(self._source()), content_type

    def may_scrape(self, scope, authenticator) -> bool:
        """Everyone when configured public, else a metrics token or an API token (from any client:
        a proxy on the same host would make every client look local); Forbidden for an API token
        without the admin permission."""
        if self.public:
            return True
        token, _ = find_token(scope)
        if token is None:
            return False
        if self.token and hmac.compare_digest(token.encode(), self.token.encode()):
            return True
        try:
            claims = authenticator.claims(token)
        except AuthError:
            return False
        authenticator.scope(token, claims).require("admin", action="read the metrics")
        return True

    def close(self) -> None:
        """Forget this process's live gauges (worker exit), so sums cover running workers only."""
        if self.directory:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.directory)


class _Workers:
    """Every worker's values files summed, as prometheus_client's multiprocess collector sums them, but
    for the files a worker has created and not yet sized: such a file holds no values, and reading it
    would fail the whole collection (`struct.error`; seen as a 500 from /status just after start-up)."""

    def __init__(self, directory: str):
        self.directory = directory

    def collect(self):
        from prometheus_client.multiprocess import MultiProcessCollector

        return MultiProcessCollector.merge([path for path in glob.glob(os.path.join(self.directory, "*.db"))
                                            if _sized(path)], accumulate=True)


def _sized(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:  # a stopped worker's file, removed meanwhile
        return False


async def scrape(request: Request) -> Response:
    """The server's metrics in Prometheus text format (OpenMetrics when the `Accept` header asks for it).

    Takes the operator's metrics token (PTGSTORE_METRICS_TOKEN) or any API token; public only when the
    operator sets PTGSTORE_METRICS_PUBLIC=true.
    ---
    security: [{bearer: []}]
    responses:
      200:
        description: the metrics
        content:
          text/plain: {schema: {type: string}}
          application/openmetrics-text: {schema: {type: string}}
    """
    metrics: Metrics = request.app.state.metrics
    if not metrics.may_scrape(request.scope, request.app.state.authenticator):
        raise HTTPException(401, "metrics need a token: PTGSTORE_METRICS_TOKEN or an API token",
                            headers={"WWW-Authenticate": "Bearer"})
    for stats in list(metrics.open_socket_stats):
        stats.count()
    body, content_type = await asyncio.to_thread(metrics.render, request.headers.get("accept"))
    return Response(body, headers={"content-type": content_type})
