"""`/status` and `/status/streams`: what the server and its streams are doing, in small JSON answers
(the dashboard polls them about once a second; so may any client)."""
from __future__ import annotations

import asyncio
import os
import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..store import StoreUnavailable

STARTED = time.time()
COUNTERS = {
    "ptgstore_entries_pushed_total": "entries_in", "ptgstore_bytes_pushed_total": "bytes_in",
    "ptgstore_entries_pulled_total": "entries_out", "ptgstore_bytes_pulled_total": "bytes_out",
}


async def streams(request: Request) -> JSONResponse:
    """One summary per stream (`Store.summaries`) and the server's clock (epoch ms) to date them by."""
    store = request.app.state.store
    summaries = await store.summaries(await store.stream_ids())
    return JSONResponse({"now": int(time.time() * 1000), "streams": summaries})


async def server(request: Request) -> JSONResponse:
    """The store's health, open sockets and entry counters (totals since start: rates are their
    differences between two calls)."""
    app = request.app
    settings = app.state.settings
    redis = {"embedded": settings.redis_url is None, "address": _address(app.state.store)}
    try:
        redis.update(await app.state.store.server_info(), reachable=True)
    except StoreUnavailable as exc:
        redis.update(reachable=False, error=str(exc))
    metrics = app.state.metrics
    for stats in list(metrics.open_socket_stats):
        stats.count()
    counters = await asyncio.to_thread(_counters, metrics)
    return JSONResponse({
        "now": int(time.time() * 1000), "uptime_s": round(time.time() - STARTED, 1), "pid": os.getpid(),
        "workers": settings.workers,
        "auth": settings.auth, "redis": redis, "followed_streams": len(app.state.hub.followers), **counters,
    })


def _address(store) -> str:
    kwargs = store.pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def _counters(metrics) -> dict:
    """Totals of the entry counters and open sockets, summed over labels (and over workers when they
    share a metrics directory), read through prometheus_client's public collection API."""
    import prometheus_client as prom  # noqa: PLC0415 - imported after the metrics directory is chosen
    from prometheus_client import multiprocess  # noqa: PLC0415

    registry = metrics.registry
    if metrics.directory:
        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics.directory)
    totals = {name: 0 for name in COUNTERS.values()}
    sockets = {"push": 0, "pull": 0}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in COUNTERS:
                totals[COUNTERS[sample.name]] += int(sample.value)
            elif sample.name == "ptgstore_open_sockets" and sample.labels.get("kind") in sockets:
                sockets[sample.labels["kind"]] += int(sample.value)
    return {**totals, "open_sockets": sockets}
