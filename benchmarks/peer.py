"""ptgstore side by side with NATS JetStream: `python -m benchmarks.run --peer nats`.

Starts a private redis-server and ptgstore (as `benchmarks.run` does) and a private nats-server
with JetStream on a file store (benchmarks/nats.py), then runs each scenario through both, the
side that goes first alternating run by run, both driven by lean raw-protocol clients
(benchmarks/leanws.py, benchmarks/nats.py) from this one process:

- push 1 KiB and 512 KiB, one at a time, each waiting for its ack (a JetStream publish ack: the
  message is stored; ptgstore's ack: the entry is in Redis);
- drain 20,000 x 1 KiB from the beginning (a pull socket `count=256`; a JetStream pull consumer
  asked for all of them at once, no acks);
- N pullers x 10 KiB at 30 Hz: one pusher with an ack per entry, N pull sockets (N NATS
  connections with a core subscription on the stream's subject).

Every entry is checked byte for byte (read back from Redis, or from the JetStream stream through a
pull consumer, or as it arrived), in order. Server CPU (user + system from /proc) is counted over
the timed part of each run only: ptgstore's processes plus its Redis, and nats-server.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from . import scenarios as s
from .harness import PrivateRedis, Server, cpu_seconds
from .leanws import LeanWebSocket
from .pullers import Spread
from .nats import LeanNats, NatsServer, check_ack, create_stream, delete_stream, fetch_all

HZ = 30
FAN_SIZE = 10 * s.KIB


@dataclass
class Env:
    ctx: s.Context  # the ptgstore server and its Redis
    redis_pid: int
    nats: NatsServer
    receivers: int = 2  # processes the fan-out's receivers are spread over


class Meter:
    """Server CPU over the timed part of a run: (the server's own, its store's) seconds."""

    def __init__(self, read):
        self.read = read
        self.used = (0.0, 0.0)
        self._start = (0.0, 0.0)

    def start(self) -> None:
        self._start = self.read()

    def stop(self) -> None:
        now = self.read()
        self.used = (now[0] - self._start[0], now[1] - self._start[1])


def ptg_meter(env: Env) -> Meter:
    return Meter(lambda: (env.ctx.server.cpu(), cpu_seconds([env.redis_pid])))


def nats_meter(env: Env) -> Meter:
    return Meter(lambda: (env.nats.cpu(), 0.0))


class Arrivals(s.Arrivals):
    """Arrivals that also note when the last one came."""

    last = 0.0

    def add(self, key: str, data) -> None:
        super().add(key, data)
        self.last = time.monotonic()


async def bounded(awaitable, limit: float):
    """`awaitable`, given at most `limit` seconds (then TimeoutError)."""
    return await asyncio.wait_for(awaitable, limit)


# -- push, each waiting for its ack ----------------------------------------------------------------

async def push_ptg(env: Env, key: str, count: int, size: int, meter: Meter, limit: float = 60) -> s.Result:
    deadline = s.deadline_after(limit)
    sent = 0
    async with LeanWebSocket(env.ctx.ws(f"/data/{key}/push", ack="true")) as ws:
        meter.start()
        start = time.perf_counter()

        async def push():
            nonlocal sent
            for i in range(count):
                await ws.send(s.payload(i, size))
                await ws.recv()
                sent += 1
                if s.past(deadline):
                    break

        await bounded(push(), limit + 30)
        elapsed = time.perf_counter() - start
        meter.stop()
    return await s.landed(env.ctx, key, sent, count, size, elapsed)


async def push_nats(env: Env, stream: str, count: int, size: int, meter: Meter, limit: float = 60) -> s.Result:
    deadline = s.deadline_after(limit)
    sent = 0
    async with LeanNats(env.nats.port) as nc:
        await create_stream(nc, stream, s.MAXLEN)
        meter.start()
        start = time.perf_counter()

        async def push():
            nonlocal sent
            for i in range(count):
                check_ack(await nc.request_nowait(stream, s.payload(i, size)), stream)
                sent += 1
                if s.past(deadline):
                    break

        await bounded(push(), limit + 30)
        elapsed = time.perf_counter() - start
        meter.stop()
        lost, corrupt = await verify_stream(nc, stream, sent, size)
        await delete_stream(nc, stream)
    return s.Result({"entries/s": sent / elapsed}, sent, lost + count - sent, corrupt)


async def verify_stream(nc: LeanNats, stream: str, expected: int, size: int) -> tuple[int, int]:
    """(lost, corrupt) of a JetStream stream that should hold entries 0..expected-1 in order."""
    found = corrupt = 0

    def check(data: bytes) -> None:
        nonlocal found, corrupt
        if not s.intact(data, found, size):
            corrupt += 1
        found += 1

    if expected:
        await fetch_all(nc, stream, expected, size, check, timeout=60)
    return max(0, expected - found), corrupt


# -- drain a backlog ------------------------------------------------------------------------------

async def drain_ptg(env: Env, key: str, count: int, meter: Meter, limit: float = 60) -> s.Result:
    arrivals = Arrivals([key], s.KIB)
    async with LeanWebSocket(env.ctx.ws(f"/data/{key}/pull", last_entry_id="0", count=256)) as ws:
        meter.start()
        start = time.perf_counter()
        with contextlib.suppress(asyncio.TimeoutError):
            await bounded(pull_into(ws, arrivals, count), limit)
        elapsed = time.perf_counter() - start
        meter.stop()
    return s.Result({"entries/s": arrivals.total / elapsed}, arrivals.total, count - arrivals.total,
                    arrivals.corrupt)


async def pull_into(ws: LeanWebSocket, arrivals: Arrivals, expected: int) -> None:
    """Receive ptgstore deliveries (a JSON header, then the blob) until `expected` entries came."""
    while arrivals.total < expected:
        header = orjson.loads(await ws.recv())
        blob = await ws.recv()
        view = memoryview(blob)
        starts = [item[2] for item in header] + [len(blob)]
        for (sid, _, start), end in zip(header, starts[1:]):
            arrivals.add(sid, view[start:end])


async def fill_nats(env: Env, stream: str, count: int, size: int) -> None:
    """Preload `count` entries into a new stream (not timed), 500 acks in flight at most."""
    async with LeanNats(env.nats.port) as nc:
        with contextlib.suppress(Exception):
            await delete_stream(nc, stream)
        await create_stream(nc, stream, s.MAXLEN)
        for first in range(0, count, 500):
            acks = [nc.request_nowait(stream, s.payload(i, size)) for i in range(first, min(count, first + 500))]
            for reply in await bounded(asyncio.gather(*acks), 60):
                check_ack(reply, stream)


async def drain_nats(env: Env, stream: str, count: int, meter: Meter, limit: float = 60) -> s.Result:
    arrivals = Arrivals([stream], s.KIB)
    started: list[float] = []

    def on_start() -> None:
        meter.start()
        started.append(time.perf_counter())

    async with LeanNats(env.nats.port) as nc:
        await fetch_all(nc, stream, count, s.KIB, lambda data: arrivals.add(stream, data), timeout=limit,
                        on_start=on_start, on_done=meter.stop)
        elapsed = (time.perf_counter() - started[0]) if started else float("nan")
    return s.Result({"entries/s": arrivals.total / elapsed}, arrivals.total, count - arrivals.total,
                    arrivals.corrupt)


# -- fan-out: one pusher at 30 Hz, N pullers ------------------------------------------------------

def fanout_result(arrivals: list[Arrivals], expected: int, sent: int, start: float, rss: int) -> s.Result:
    latencies = [ms for a in arrivals for ms in a.latencies]
    got = sum(a.total for a in arrivals)
    # the rate each puller was served at: entries over the time from the first send to its last arrival
    rates = [a.total / (a.last - start + 1 / HZ) for a in arrivals if a.total]
    result = s.Result({"Hz reached": s.median(rates) if rates else 0.0,
                       "p50 ms": s.percentile(latencies, 0.5),
                       "p99 ms": s.percentile(latencies, 0.99),
                       "complete %": 100 * sum(1 for a in arrivals if a.total >= expected) / len(arrivals),
                       "server RSS MB": rss / 2**20},
                      got, max(0, expected * len(arrivals) - got), sum(a.corrupt for a in arrivals))
    if sent < expected:
        result.notes.append(f"only {sent} of {expected} pushed in time")
    return result


async def open_all(openers: list) -> list:
    """Each opener's connection, at most 50 handshakes at a time."""
    gate = asyncio.Semaphore(50)

    async def one(opener):
        async with gate:
            return await opener()

    return list(await bounded(asyncio.gather(*(one(opener) for opener in openers)), 180))


async def fanout_ptg(env: Env, key: str, pullers: int, seconds: float, meter: Meter) -> s.Result:
    expected = int(seconds * HZ)
    deadline = s.deadline_after(seconds + 60)
    rss = 0
    async with Spread("ws", env.ctx.ws(f"/data/{key}/pull"), key, pullers, expected, FAN_SIZE, seconds + 60,
                      env.receivers) as spread, \
            LeanWebSocket(env.ctx.ws(f"/data/{key}/push", ack="true")) as pusher:
        meter.start()
        start = time.monotonic()
        sent = 0
        async for k in s.paced(expected, HZ, deadline, start):
            await pusher.send(s.payload(k, FAN_SIZE, time.time_ns()))
            await bounded(pusher.recv(), 30)
            sent += 1
            if k == expected // 2:
                rss = env.ctx.server.rss()
        received = await spread.results(max(1.0, deadline - time.monotonic() + 30))
        meter.stop()
    await s.cleanup(env.ctx, [key])
    return fanout_result(received, expected, sent, start, rss)


async def fanout_nats(env: Env, stream: str, pullers: int, seconds: float, meter: Meter) -> s.Result:
    expected = int(seconds * HZ)
    deadline = s.deadline_after(seconds + 60)
    rss = 0
    # each subscriber's SUB is in place once its process says it is ready (every PING answered)
    async with Spread("nats", str(env.nats.port), stream, pullers, expected, FAN_SIZE, seconds + 60,
                      env.receivers) as spread, LeanNats(env.nats.port) as pusher:
        await create_stream(pusher, stream, s.MAXLEN)
        meter.start()
        start = time.monotonic()
        sent = 0
        async for k in s.paced(expected, HZ, deadline, start):
            check_ack(await bounded(pusher.request_nowait(stream, s.payload(k, FAN_SIZE, time.time_ns())), 30),
                      stream)
            sent += 1
            if k == expected // 2:
                rss = env.nats.rss()
        received = await spread.results(max(1.0, deadline - time.monotonic() + 30))
        meter.stop()
        await delete_stream(pusher, stream)
    return fanout_result(received, expected, sent, start, rss)


async def all_done(receivers: list, deadline: float) -> None:
    """Until every receiver got what it expects, or `deadline` (what is missing then counts as lost)."""
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
        await bounded(asyncio.gather(*(r.done for r in receivers)), max(0.01, deadline - time.monotonic()))


# -- the run --------------------------------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    title: str
    ptg: object  # (env, rep, meter) -> awaitable Result
    nats: object
    per: str = "entry"


@dataclass
class Row:
    scenario: Scenario
    ptg: list = field(default_factory=list)
    nats: list = field(default_factory=list)
    ptg_cpu: list = field(default_factory=list)  # (server, store) seconds per entry, per run
    nats_cpu: list = field(default_factory=list)


def build(scale: float, fanout: tuple[int, ...]) -> list[Scenario]:
    def n(full: int, least: int) -> int:
        return max(least, int(full * scale))

    drain = n(20_000, 300)
    fan_seconds = max(1.0, 3 * scale)
    out = [
        Scenario("single", "push 1 KiB, ack each",
                 lambda e, r, m: push_ptg(e, f"p1k-{r}", n(3000, 20), s.KIB, m),
                 lambda e, r, m: push_nats(e, f"n1k{r}", n(3000, 20), s.KIB, m)),
        Scenario("frames", "push 512 KiB, ack each",
                 lambda e, r, m: push_ptg(e, f"p512k-{r}", n(150, 5), 512 * s.KIB, m),
                 lambda e, r, m: push_nats(e, f"n512k{r}", n(150, 5), 512 * s.KIB, m)),
        Scenario("drain", f"drain {drain} x 1 KiB",
                 lambda e, r, m: drain_ptg(e, "drain-src", drain, m),
                 lambda e, r, m: drain_nats(e, "drainsrc", drain, m)),
    ]
    for pullers in fanout:
        out.append(Scenario(
            f"fanout{pullers}", f"{pullers} pullers x 10 KiB at 30 Hz",
            lambda e, r, m, p=pullers: fanout_ptg(e, f"fan{p}-{r}", p, fan_seconds, m),
            lambda e, r, m, p=pullers: fanout_nats(e, f"fan{p}n{r}", p, fan_seconds, m),
            per="delivery"))
    return out


async def run_scenario(env: Env, scenario: Scenario, repeats: int) -> Row:
    row = Row(scenario)

    async def ptg(rep: int) -> None:
        meter = ptg_meter(env)
        result = await scenario.ptg(env, rep, meter)
        row.ptg.append(result)
        if result.entries:
            row.ptg_cpu.append(tuple(u / result.entries for u in meter.used))

    async def nats(rep: int) -> None:
        meter = nats_meter(env)
        result = await scenario.nats(env, rep, meter)
        row.nats.append(result)
        if result.entries:
            row.nats_cpu.append(tuple(u / result.entries for u in meter.used))

    for rep in range(repeats):
        first, second = (ptg, nats) if rep % 2 == 0 else (nats, ptg)
        await first(rep)
        await second(rep)
        for side, result in (("ptgstore", row.ptg[-1]), ("NATS", row.nats[-1])):
            if result.lost or result.corrupt:
                print(f"!!! LOST {result.lost} / CORRUPT {result.corrupt} entries: {scenario.name} run {rep} "
                      f"({side})", file=sys.stderr, flush=True)
            for note in result.notes:
                print(f"!!! {scenario.name} run {rep} ({side}): {note}", file=sys.stderr, flush=True)
    return row


def _us(values: list, index: int) -> float:
    return 1e6 * s.median([v[index] for v in values]) if values else float("nan")


def table(rows: list[Row]) -> list[str]:
    from .run import fmt  # (run imports this module)

    lines = ["| scenario | metric | ptgstore | NATS JetStream | ptgstore / NATS | ptgstore CPU (app + Redis) "
             "| NATS CPU | CPU ptgstore / NATS | lost |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        sc = row.scenario
        app, store, nats = _us(row.ptg_cpu, 0), _us(row.ptg_cpu, 1), _us(row.nats_cpu, 0)
        lost = sum(r.lost + r.corrupt for r in row.ptg + row.nats)
        for i, metric in enumerate(row.ptg[0].figures):
            ptg = s.median([r.figures[metric] for r in row.ptg])
            peer = s.median([r.figures[metric] for r in row.nats])
            ratio = ptg / peer if peer else float("nan")
            first = i == 0
            cpu = f"{app + store:.0f} ({app:.0f} + {store:.0f}) µs/{sc.per}" if first else ""
            nats_cpu = f"{nats:.0f} µs/{sc.per}" if first else ""
            cpu_ratio = f"{(app + store) / nats:.2f}" if first and nats else ""
            lines.append(f"| {sc.title if first else ''} | {metric} | {fmt(ptg)} | {fmt(peer)} | {ratio:.3f} "
                         f"| {cpu} | {nats_cpu} | {cpu_ratio} "
                         f"| {('**LOST %d**' % lost if lost else '0') if first else ''} |")
    return lines


async def run_all(args) -> int:
    from .run import machine

    fanout = tuple(int(x) for x in args.fanout.split(",") if x)
    rows = []
    chosen = [sc for sc in build(args.scale, fanout) if not args.only or sc.name in args.only.split(",")]
    drain = next((sc for sc in chosen if sc.name == "drain"), None)
    with tempfile.TemporaryDirectory(prefix="ptgstore-bench-redis-") as directory, \
            PrivateRedis(Path(directory), unix=args.redis_unix) as private, NatsServer() as nats, \
            Server(private.server_url, workers=args.workers) as server:
        ctx = s.Context(private.url, server, args.scale, fanout)  # (the benchmark's own checks: over TCP)
        env = Env(ctx, private.process.pid, nats, args.receivers)
        if drain is not None:
            count = max(300, int(20_000 * args.scale))
            await s.fill(ctx, "drain-src", count, s.KIB)
            await fill_nats(env, "drainsrc", count, s.KIB)
        for sc in chosen:
            started = time.monotonic()
            rows.append(await run_scenario(env, sc, args.repeats))
            print(f"  {sc.name}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        version = nats.version()
    print(f"\nptgstore / NATS JetStream {version} (file store), medians of {args.repeats} alternating run(s), "
          f"scale {args.scale:g}, ptgstore with {args.workers} worker(s) on Redis over "
          f"{'a unix socket' if args.redis_unix else 'TCP'}; {machine()}; load average "
          f"{os.getloadavg()[0]:.1f}")
    print()
    print("\n".join(table(rows)))
    print("\nthroughput: higher is better; p99 and CPU: lower is better. CPU is user + system time of the "
          "server processes (ptgstore's app and its Redis; nats-server) over the timed part of each run.")
    lost = sum(r.lost + r.corrupt for row in rows for r in row.ptg + row.nats)
    if lost:
        print(f"\n!!! LOST OR CORRUPT ENTRIES: {lost} !!!")
        return 1
    print("\nevery entry landed and arrived byte-exact, on both sides")
    return 0
