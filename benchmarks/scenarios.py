"""Each scenario twice: through ptgstore (WebSocket / HTTP) and as the same work done by
redis-py asyncio directly. Every run is bounded in count and time and checks that what
landed (or arrived) is byte-exact."""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

KIB = 1024
FIELD = b"d"
FILL = random.Random(6).randbytes(1024 * KIB)
_STAMP = struct.Struct("<QQ")  # entry index, send time (ns since the epoch)


def payload(index: int, size: int, sent_ns: int = 0) -> bytes:
    """Entry `index`: its index and send time, then deterministic filler up to `size` bytes."""
    return _STAMP.pack(index, sent_ns) + FILL[: size - _STAMP.size]


def stamp(data) -> tuple[int, int]:
    return _STAMP.unpack_from(data)


def intact(data, index: int, size: int) -> bool:
    """Whether `data` is exactly entry `index` of `size` bytes (the send time aside)."""
    return (len(data) == size and _STAMP.unpack_from(data)[0] == index
            and memoryview(data)[_STAMP.size:] == memoryview(FILL)[: size - _STAMP.size])


@dataclass
class Result:
    """One run of one side: its figures, how many entries it moved, and what went wrong."""

    figures: dict  # metric name -> value
    entries: int
    lost: int = 0
    corrupt: int = 0
    notes: list = field(default_factory=list)


@dataclass
class Context:
    redis_url: str
    server: object  # harness.Server
    scale: float
    fanout_sizes: tuple = (10, 100, 1000)

    def n(self, full: int, least: int = 1) -> int:
        return max(least, int(full * self.scale))

    def ws(self, path: str, **query) -> str:
        query["token"] = self.server.token
        return f"{self.server.ws_url}{path}?" + "&".join(f"{k}={v}" for k, v in query.items())

    def redis(self, **kwargs) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.redis_url, **kwargs)


MAXLEN = 100_000  # the server runs with PTGSTORE_MAX_LEN equal to this; raw trims alike
WS_OPTIONS = dict(compression=None, max_size=None, ping_interval=None, open_timeout=30, close_timeout=5)


def ws_connect(url: str, **extra):
    return connect(url, **WS_OPTIONS, **extra)


def deadline_after(seconds: float) -> float:
    return time.monotonic() + seconds


def past(deadline: float) -> bool:
    return time.monotonic() > deadline


async def verify_landed(ctx: Context, key: str, expected: int, size: int) -> tuple[int, int]:
    """(lost, corrupt) entries of stream `key` that should hold entries 0..expected-1 in order."""
    found = corrupt = 0
    cursor = "-"
    async with ctx.redis() as r:
        while True:
            records = await r.xrange(key, cursor, "+", count=1000)
            if not records:
                break
            for entry_id, fields in records:
                if not intact(fields.get(FIELD, b""), found, size):
                    corrupt += 1
                found += 1
            cursor = "(" + records[-1][0].decode()
        await r.delete(key)
    return max(0, expected - found), corrupt


async def landed(ctx: Context, key: str, sent: int, expected: int, size: int, elapsed: float) -> Result:
    """The throughput of a push run, with what of the `expected` entries did not land intact."""
    lost, corrupt = await verify_landed(ctx, key, sent, size)
    return Result({"entries/s": sent / elapsed}, sent, lost + expected - sent, corrupt)

def percentile(values: list, fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- pushes of single entries, batches and large frames ------------------------------------------

async def push_ack_ptg(ctx: Context, key: str, count: int, size: int, limit: float, **query) -> Result:
    deadline = deadline_after(limit)
    sent = 0
    async with ws_connect(ctx.ws(f"/data/{key}/push", ack="true", **query)) as ws:
        start = time.perf_counter()
        for i in range(count):
            await ws.send(payload(i, size))
            await ws.recv()
            sent += 1
            if past(deadline):
                break
        elapsed = time.perf_counter() - start
    return await landed(ctx, key, sent, count, size, elapsed)


async def push_ack_raw(ctx: Context, key: str, count: int, size: int, limit: float) -> Result:
    deadline = deadline_after(limit)
    sent = 0
    async with ctx.redis() as r:
        start = time.perf_counter()
        for i in range(count):
            await r.xadd(key, {FIELD: payload(i, size)}, maxlen=MAXLEN, approximate=True)
            sent += 1
            if past(deadline):
                break
        elapsed = time.perf_counter() - start
    return await landed(ctx, key, sent, count, size, elapsed)


async def wait_visible(ctx: Context, key: str, count: int, deadline: float) -> bool:
    async with ctx.redis() as r:
        while not past(deadline):
            if await r.xlen(key) >= count:
                return True
            await asyncio.sleep(0.001)
    return False


async def push_noack_ptg(ctx: Context, key: str, count: int, size: int, limit: float) -> Result:
    deadline = deadline_after(limit)
    sent = 0
    async with ws_connect(ctx.ws(f"/data/{key}/push")) as ws:
        start = time.perf_counter()
        for i in range(count):
            await ws.send(payload(i, size))
            sent += 1
            if past(deadline):
                break
        visible = await wait_visible(ctx, key, sent, deadline_after(limit))
        elapsed = time.perf_counter() - start
    result = await landed(ctx, key, sent, count, size, elapsed)
    if not visible:
        result.notes.append("last entry never became visible")
    return result


async def push_noack_raw(ctx: Context, key: str, count: int, size: int, limit: float) -> Result:
    """redis-py cannot send without awaiting replies: the nearest is a pipeline of plain XADDs."""
    deadline = deadline_after(limit)
    sent = 0
    async with ctx.redis() as r:
        start = time.perf_counter()
        while sent < count and not past(deadline):
            async with r.pipeline(transaction=False) as pipe:
                for i in range(sent, min(count, sent + 256)):
                    pipe.xadd(key, {FIELD: payload(i, size)}, maxlen=MAXLEN, approximate=True)
                sent += len(await pipe.execute())
        elapsed = time.perf_counter() - start
    return await landed(ctx, key, sent, count, size, elapsed)


def batch_of(first: int, per_batch: int, size: int) -> tuple[bytes, bytes]:
    header = orjson.dumps([i * size for i in range(per_batch)])
    return header, b"".join(payload(first + i, size) for i in range(per_batch))


async def batch_ack_ptg(ctx: Context, key: str, batches: int, per_batch: int, size: int, limit: float,
                        **query) -> Result:
    deadline = deadline_after(limit)
    sent = 0
    async with ws_connect(ctx.ws(f"/data/{key}/push", ack="true", batch="true", **query)) as ws:
        start = time.perf_counter()
        for b in range(batches):
            header, blob = batch_of(b * per_batch, per_batch, size)
            await ws.send(header.decode())
            await ws.send(blob)
            await ws.recv()
            sent += per_batch
            if past(deadline):
                break
        elapsed = time.perf_counter() - start
    return await landed(ctx, key, sent, batches * per_batch, size, elapsed)


async def batch_ack_raw(ctx: Context, key: str, batches: int, per_batch: int, size: int, limit: float) -> Result:
    """All or nothing, as ptgstore stores a batch: MULTI/EXEC around the XADDs."""
    deadline = deadline_after(limit)
    sent = 0
    async with ctx.redis() as r:
        start = time.perf_counter()
        for b in range(batches):
            _, blob = batch_of(b * per_batch, per_batch, size)
            view = memoryview(blob)
            async with r.pipeline(transaction=True) as pipe:
                for i in range(per_batch):
                    pipe.xadd(key, {FIELD: view[i * size:(i + 1) * size]}, maxlen=MAXLEN, approximate=True)
                await pipe.execute()
            sent += per_batch
            if past(deadline):
                break
        elapsed = time.perf_counter() - start
    return await landed(ctx, key, sent, batches * per_batch, size, elapsed)


# -- live: 8 pushers at 30 Hz, one puller on all 8 streams ---------------------------------------

async def paced(count: int, hz: float, deadline: float, start: float | None = None):
    """Yield 0..count-1 at `hz` from `start` (a monotonic time; now by default), never past `deadline`."""
    start = time.monotonic() if start is None else start
    for k in range(count):
        delay = start + k / hz - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if past(deadline):
            return
        yield k


def together() -> float:
    """The moment every pusher of a live scenario sends its first entry (they then tick together,
    as the sensors of one headset do). Left to when each pusher's socket happened to be ready, the
    pushers' phases changed from run to run and with them how many 100 KiB frames met at the server
    at once: the latencies of runs of the same code then differed more than any change measured."""
    return time.monotonic() + 0.05


async def pace_ws_pusher(ws, count: int, size: int, hz: float, deadline: float, start: float) -> int:
    """Push `count` entries at `hz` on the open socket `ws`, each waiting for its ack."""
    sent = 0
    async for k in paced(count, hz, deadline, start):
        await ws.send(payload(k, size, time.time_ns()))
        await ws.recv()
        sent += 1
    return sent


async def pace_raw_pusher(r, key: str, count: int, size: int, hz: float, deadline: float,
                          start: float) -> int:
    sent = 0
    async for k in paced(count, hz, deadline, start):
        await r.xadd(key, {FIELD: payload(k, size, time.time_ns())}, maxlen=MAXLEN, approximate=True)
        sent += 1
    return sent


class Arrivals:
    """What a puller received per stream: latencies, and whether each entry came in order and intact."""

    def __init__(self, keys: list[str], size: int):
        self.next = {key: 0 for key in keys}
        self.size = size
        self.latencies: list[float] = []
        self.corrupt = 0
        self.total = 0

    def add(self, key: str, data) -> None:
        now = time.time_ns()
        index, sent_ns = stamp(data)
        if not intact(data, self.next[key], self.size):
            self.corrupt += 1
        self.next[key] = index + 1
        self.latencies.append((now - sent_ns) / 1e6)
        self.total += 1


async def ws_pull_into(ws, arrivals: Arrivals, expected: int, deadline: float) -> None:
    """Receive until `expected` entries arrived or `deadline` passed (one timer for the whole pull:
    a timer per message would cost the load generator more than the server spends)."""
    try:
        await asyncio.wait_for(_ws_pull(ws, arrivals, expected), max(0.01, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        return


async def _ws_pull(ws, arrivals: Arrivals, expected: int) -> None:
    while arrivals.total < expected:
        header = orjson.loads(await ws.recv())
        blob = await ws.recv()
        view = memoryview(blob)
        starts = [item[2] for item in header] + [len(blob)]
        for (sid, _, start), end in zip(header, starts[1:]):
            arrivals.add(sid, view[start:end])


async def raw_pull_into(r, keys: list[str], cursors: dict, arrivals: Arrivals, expected: int, deadline: float,
                        count: int = 64) -> None:
    while arrivals.total < expected and not past(deadline):
        reply = await r.xread(cursors, count=count, block=200)
        for key, records in reply or []:
            key = key.decode()
            for entry_id, fields in records:
                arrivals.add(key, fields[FIELD])
            cursors[key] = records[-1][0]


def live_result(arrivals: Arrivals, expected: int, sent: int) -> Result:
    result = Result({"p50 ms": percentile(arrivals.latencies, 0.5), "p99 ms": percentile(arrivals.latencies, 0.99)},
                    arrivals.total, max(0, expected - arrivals.total), arrivals.corrupt)
    if sent < expected:
        result.notes.append(f"only {sent} of {expected} pushed in time")
    return result


async def live_ptg(ctx: Context, prefix: str, streams: int, seconds: float, size: int, hz: float) -> Result:
    keys = [f"{prefix}-{j}" for j in range(streams)]
    per_stream = int(seconds * hz)
    expected = per_stream * streams
    deadline = deadline_after(seconds + 20)
    arrivals = Arrivals(keys, size)
    async with contextlib.AsyncExitStack() as sockets:
        puller = await sockets.enter_async_context(ws_connect(ctx.ws(f"/data/{'+'.join(keys)}/pull", count=64)))
        pushers = [await sockets.enter_async_context(ws_connect(ctx.ws(f"/data/{key}/push", ack="true")))
                   for key in keys]
        reader = asyncio.create_task(ws_pull_into(puller, arrivals, expected, deadline))
        start = together()
        sent = await asyncio.gather(*(pace_ws_pusher(ws, per_stream, size, hz, deadline, start)
                                      for ws in pushers))
        await reader
    await cleanup(ctx, keys)
    return live_result(arrivals, expected, sum(sent))


async def live_raw(ctx: Context, prefix: str, streams: int, seconds: float, size: int, hz: float) -> Result:
    keys = [f"{prefix}-{j}" for j in range(streams)]
    per_stream = int(seconds * hz)
    expected = per_stream * streams
    deadline = deadline_after(seconds + 20)
    arrivals = Arrivals(keys, size)
    async with ctx.redis() as pushers, ctx.redis(single_connection_client=True) as reader_client:
        cursors = {key: await last_id(pushers, key) for key in keys}
        reader = asyncio.create_task(raw_pull_into(reader_client, keys, cursors, arrivals, expected, deadline))
        start = together()
        sent = await asyncio.gather(*(pace_raw_pusher(pushers, key, per_stream, size, hz, deadline, start)
                                      for key in keys))
        await reader
    await cleanup(ctx, keys)
    return live_result(arrivals, expected, sum(sent))


async def last_id(r, key: str) -> bytes:
    newest = await r.xrevrange(key, count=1)
    return newest[0][0] if newest else b"0-0"


async def cleanup(ctx: Context, keys: list[str]) -> None:
    async with ctx.redis() as r:
        await r.delete(*keys)


# -- fan-out: one pusher at 30 Hz, N pullers on the same stream -----------------------------------

def redis_connections(pids: list[int], redis_port: int) -> int:
    """TCP connections from processes `pids` to the Redis port (from /proc, as `ss -p` finds them)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    port_hex = f":{redis_port:04X}"
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[2].endswith(port_hex) and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def fanout_result(arrivals: list[Arrivals], expected: int, sent: int, connections: int) -> Result:
    latencies = [ms for a in arrivals for ms in a.latencies]
    got = sum(a.total for a in arrivals)
    complete = sum(1 for a in arrivals if a.total >= expected)
    result = Result({"p99 ms": percentile(latencies, 0.99), "complete %": 100 * complete / len(arrivals),
                     "redis conns": connections},
                    got, max(0, expected * len(arrivals) - got), sum(a.corrupt for a in arrivals))
    if sent < expected:
        result.notes.append(f"only {sent} of {expected} pushed in time")
    return result


async def fanout_ptg(ctx: Context, key: str, pullers: int, seconds: float, size: int, hz: float) -> Result:
    expected = int(seconds * hz)
    deadline = deadline_after(seconds + 60)
    arrivals = [Arrivals([key], size) for _ in range(pullers)]
    gate = asyncio.Semaphore(50)  # at most this many handshakes at a time
    connected: list = []

    async def open_one():
        async with gate:
            connected.append(await ws_connect(ctx.ws(f"/data/{key}/pull")).__aenter__())

    try:
        await asyncio.wait_for(asyncio.gather(*(open_one() for _ in range(pullers))), 120)
        readers = [asyncio.create_task(ws_pull_into(ws, a, expected, deadline)) for ws, a in zip(connected, arrivals)]
        async with ws_connect(ctx.ws(f"/data/{key}/push", ack="true")) as pusher:
            sent = 0
            async for k in paced(expected, hz, deadline):
                await pusher.send(payload(k, size, time.time_ns()))
                await pusher.recv()
                sent += 1
                if k == expected // 2:
                    connections = redis_connections(ctx.server.pids(), ctx.server.redis_port)
        await asyncio.gather(*readers)
    finally:
        await asyncio.gather(*(ws.close() for ws in connected), return_exceptions=True)
    await cleanup(ctx, [key])
    return fanout_result(arrivals, expected, sent, connections)


async def fanout_raw(ctx: Context, key: str, pullers: int, seconds: float, size: int, hz: float) -> Result:
    expected = int(seconds * hz)
    deadline = deadline_after(seconds + 60)
    arrivals = [Arrivals([key], size) for _ in range(pullers)]
    clients = [ctx.redis(single_connection_client=True) for _ in range(pullers)]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.ping() for c in clients)), 120)
        async with ctx.redis() as pusher:
            start = await last_id(pusher, key)
            readers = [asyncio.create_task(raw_pull_into(c, [key], {key: start}, a, expected, deadline, count=1))
                       for c, a in zip(clients, arrivals)]
            sent = 0
            async for k in paced(expected, hz, deadline):
                await pusher.xadd(key, {FIELD: payload(k, size, time.time_ns())}, maxlen=MAXLEN, approximate=True)
                sent += 1
                if k == expected // 2:
                    connections = redis_connections([os.getpid()], ctx.server.redis_port)
            await asyncio.gather(*readers)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
    await cleanup(ctx, [key])
    return fanout_result(arrivals, expected, sent, connections)


# -- drain: read a backlog from the beginning -----------------------------------------------------

async def fill(ctx: Context, key: str, count: int, size: int) -> None:
    """Preload `count` entries (not timed)."""
    async with ctx.redis() as r:
        if await r.xlen(key) == count:
            return
        await r.delete(key)
        for first in range(0, count, 500):
            async with r.pipeline(transaction=False) as pipe:
                for i in range(first, min(count, first + 500)):
                    pipe.xadd(key, {FIELD: payload(i, size)})
                await pipe.execute()


async def drain_ptg(ctx: Context, key: str, count: int, size: int, batch: int, limit: float) -> Result:
    arrivals = Arrivals([key], size)
    deadline = deadline_after(limit)
    async with ws_connect(ctx.ws(f"/data/{key}/pull", last_entry_id="0", count=batch)) as ws:
        start = time.perf_counter()
        await ws_pull_into(ws, arrivals, count, deadline)
        elapsed = time.perf_counter() - start
    return Result({"entries/s": arrivals.total / elapsed}, arrivals.total, count - arrivals.total, arrivals.corrupt)


async def drain_raw(ctx: Context, key: str, count: int, size: int, batch: int, limit: float) -> Result:
    arrivals = Arrivals([key], size)
    deadline = deadline_after(limit)
    cursor = "0-0"
    async with ctx.redis() as r:
        start = time.perf_counter()
        while arrivals.total < count and not past(deadline):
            records = await r.xrange(key, "(" + cursor, "+", count=batch)
            if not records:
                break
            for _, fields in records:
                arrivals.add(key, fields[FIELD])
            cursor = records[-1][0].decode()
        elapsed = time.perf_counter() - start
    return Result({"entries/s": arrivals.total / elapsed}, arrivals.total, count - arrivals.total, arrivals.corrupt)


# -- REST: GET the latest entry with concurrent clients ------------------------------------------

class KeepAliveGet:
    """GETs over one kept-alive HTTP/1.1 connection, responses parsed by httptools.

    httpx spends more CPU per request than the server does (about 2.5 ms here), which
    would measure the load generator instead of ptgstore; this costs a few tens of µs.
    """

    def __init__(self, host: str, port: int, headers: dict):
        self.host, self.port = host, port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
        self.reader = self.writer = None

    async def __aenter__(self) -> "KeepAliveGet":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.writer.close()

    async def get(self, target: str, timeout: float = 30) -> tuple[int, dict, bytes]:
        self.writer.write(f"GET {target} HTTP/1.1\r\n{self.head}\r\n".encode())
        headers, chunks, done = {}, [], []
        parser = httptools.HttpResponseParser(_ResponseSink(headers, chunks, done))
        while not done:
            data = await asyncio.wait_for(self.reader.read(256 * KIB), timeout)
            if not data:
                raise ConnectionError("server closed the connection")
            parser.feed_data(data)
        return parser.get_status_code(), headers, b"".join(chunks)


class _ResponseSink:
    def __init__(self, headers: dict, chunks: list, done: list):
        self.headers, self.chunks, self.done = headers, chunks, done

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.done.append(True)


async def rest_ptg(ctx: Context, server, key: str, requests: int, clients: int, expected: bytes,
                   limit: float) -> Result:
    deadline = deadline_after(limit)
    done = corrupt = 0
    target = f"/data/{key}?last_entry_id=*&count=1"
    headers = {"Authorization": f"Bearer {server.token}"}

    async def client():
        nonlocal done, corrupt
        async with KeepAliveGet("127.0.0.1", server.port, headers) as http:
            while done < requests and not past(deadline):
                done += 1
                status, reply_headers, body = await http.get(target)
                if status != 200 or body != expected or orjson.loads(reply_headers["entry-offset"])[0][2] != 0:
                    corrupt += 1

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    return Result({"requests/s": done / elapsed}, done, 0, corrupt)


async def rest_raw(ctx: Context, server, key: str, requests: int, clients: int, expected: bytes,
                   limit: float) -> Result:
    deadline = deadline_after(limit)
    done = corrupt = 0
    async with aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            ctx.redis_url, max_connections=clients)) as r:
        async def client():
            nonlocal done, corrupt
            while done < requests and not past(deadline):
                done += 1
                records = await r.xrevrange(key, count=1)
                if not records or records[0][1][FIELD] != expected:
                    corrupt += 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return Result({"requests/s": done / elapsed}, done, 0, corrupt)


def median(values: list) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")
