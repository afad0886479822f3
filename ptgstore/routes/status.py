"""`/status` and `/status/streams`: what the server and its streams are doing, in small JSON answers
(the dashboard polls them about once a second; so may any client).

Each answer is a snapshot shared by every caller for up to a second (stamped with the server time
`now` it was taken at): ten open dashboards cost the server what one does.
"""
from __future__ import annotations

import asyncio
import os
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..store import StoreUnavailable
from . import permissions, require

STARTED = time.time()
SNAPSHOT_AGE = 1.0  # seconds a status answer is shared for
COUNTERS = {
    "ptgstore_entries_pushed_total": "entries_in", "ptgstore_bytes_pushed_total": "bytes_in",
    "ptgstore_entries_pulled_total": "entries_out", "ptgstore_bytes_pulled_total": "bytes_out",
}


class Snapshot:
    """One computation shared by every caller within `max_age` seconds of its start, and by the
    callers that arrive while it runs. A failure is not kept: the next caller tries again."""

    def __init__(self, compute, max_age: float = SNAPSHOT_AGE):
        self.compute = compute
        self.max_age = max_age
        self.value = None
        self.taken = 0.0
        self.pending: asyncio.Future | None = None

    async def get(self):
        if self.value is not None and time.monotonic() - self.taken < self.max_age:
            return self.value
        if self.pending is None:
            self.pending = asyncio.ensure_future(self._take())
        return await asyncio.shield(self.pending)

    async def _take(self):
        started = time.monotonic()
        try:
            self.value = await self.compute()
            self.taken = started
            return self.value
        finally:
            self.pending = None


def _snapshot(request: Request, name: str, compute) -> Snapshot:
    snapshots = getattr(request.app.state, "status_snapshots", None)
    if snapshots is None:
        snapshots = request.app.state.status_snapshots = {}
    if name not in snapshots:
        snapshots[name] = Snapshot(compute)
    return snapshots[name]


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json", headers={"cache-control": "no-store"})


async def streams(request: Request) -> Response:
    """Every stream's summary and the server clock `now`: a snapshot shared for up to a second.

    A summary: `sid`, `length`, `last-generated-id`, `entries-added` (null before Redis 7),
    `first-entry`, `last-entry`, `last-entry-size`, `last-entry-type`, `max_len`, `meta`.
    ---
    raises: [StoreError, StoreUnavailable]
    responses:
      200:
        description: the summaries, sorted by stream id
        content:
          application/json:
            schema:
              type: object
              required: [now, streams]
              properties:
                now: {type: integer, description: epoch milliseconds}
                streams: {type: array, items: {type: object, required: [sid, length], properties: {sid: {type: string}, length: {type: integer}}}}
    """
    store = request.app.state.store

    async def compute() -> tuple[bytes, int, list]:
        now = int(time.time() * 1000)
        summaries = await store.summaries(await store.stream_ids())
        return orjson.dumps({"now": now, "streams": summaries}), now, summaries

    body, now, summaries = await _snapshot(request, "streams", compute).get()
    scope = permissions(request)
    if not scope.read.everything:  # the shared snapshot, filtered for this caller
        body = orjson.dumps({"now": now, "streams": [s for s in summaries if scope.can_read(s["sid"])]})
    return _json(body)


async def server(request: Request) -> Response:
    """The server's status: the store, open sockets and entry counters (totals since start).

    Rates are the differences of the counters between two answers, over the difference of their
    `now`. A snapshot shared for up to a second.
    ---
    responses:
      200:
        description: the status
        content:
          application/json:
            schema:
              type: object
              required: [now, uptime_s, redis, entries_in, bytes_in, entries_out, bytes_out, open_sockets]
              properties:
                now: {type: integer}
                redis: {type: object, required: [reachable], properties: {reachable: {type: boolean}}}
                open_sockets: {type: object, properties: {push: {type: integer}, pull: {type: integer}}}
    """
    require(request, "admin", action="see the server's status")
    app = request.app

    async def compute() -> bytes:
        settings = app.state.settings
        now = int(time.time() * 1000)
        address = app.state.store.connections.address
        # no file paths for token holders: a unix socket is named as such
        redis = {"embedded": settings.redis_url is None, "address": "unix socket" if address.startswith("unix:") else address}
        try:
            redis.update(await app.state.store.server_info(), reachable=True)
        except StoreUnavailable as exc:
            redis.update(reachable=False, error=str(exc))
        metrics = app.state.metrics
        for stats in list(metrics.open_socket_stats):
            stats.count()
        counters = await asyncio.to_thread(_counters, metrics)
        return orjson.dumps({
            "now": now, "uptime_s": round(time.time() - STARTED, 1), "pid": os.getpid(), "workers": settings.workers,
            "auth": settings.auth, "redis": redis, "followed_streams": len(app.state.hub.followers), **counters,
            "recordings": app.state.recorder.status(),
        })

    return _json(await _snapshot(request, "server", compute).get())


def _counters(metrics) -> dict:
    """Totals of the entry counters and open sockets, summed over labels (and over workers when they
    share a metrics directory), read through prometheus_client's public collection API."""
    totals = {name: 0 for name in COUNTERS.values()}
    sockets = {"push": 0, "pull": 0}
    for family in metrics.families():
        for sample in family.samples:
            if sample.name in COUNTERS:
                totals[COUNTERS[sample.name]] += int(sample.value)
            elif sample.name == "ptgstore_open_sockets" and sample.labels.get("kind") in sockets:
                sockets[sample.labels["kind"]] += int(sample.value)
    return {**totals, "open_sockets": sockets}
