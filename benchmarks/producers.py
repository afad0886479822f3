"""What idempotent pushes cost: the same acknowledged pushes with and without a producer named
(`producer=`, `seq=`: docs/protocol.md), alternating on one server and one Redis, so that both
meet the same load. Prints, per kind of push, the medians of the server's CPU per entry (every
thread's schedstat, in ns: `harness.cpu_seconds`) and of Redis's (INFO cpu), plain and named, and
the change; then the same pushes made from this process straight into
the store (no sockets), with this process's CPU per entry: the steadier figure of what the named
path itself costs on the server's side.

    python -m benchmarks.producers              # 7 rounds of each
    python -m benchmarks.producers --quick
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from ptgstore.producers import Producers
from ptgstore.store import Store

from . import scenarios as s
from .harness import PrivateRedis, Server

KINDS = [  # name, entries per message, entry size, messages per round (full scale)
    ("1 KiB entries", 1, s.KIB, 3000),
    ("batches of 64 x 1 KiB", 64, s.KIB, 300),
    ("512 KiB frames", 1, 512 * s.KIB, 150),
]


def server_cpu_ns(server: Server) -> int:
    """Nanoseconds the server's processes have run on a CPU."""
    return int(server.cpu() * 1e9)


async def redis_cpu_ns(r: aioredis.Redis) -> int:
    info = await r.info("cpu")
    return int((info["used_cpu_user"] + info["used_cpu_sys"]) * 1e9)


async def push_round(server: Server, key: str, per_message: int, size: int, messages: int, query: dict) -> int:
    """Acknowledged pushes of `messages` messages; the entries stored."""
    params = {"ack": "true", "token": server.token, **query}
    if per_message > 1:
        params["batch"] = "true"
    url = f"{server.ws_url}/data/{key}/push?" + "&".join(f"{k}={v}" for k, v in params.items())
    async with s.ws_connect(url) as ws:
        for m in range(messages):
            if per_message > 1:
                header, blob = s.batch_of(m * per_message, per_message, size)
                await ws.send(header.decode())
                await ws.send(blob)
            else:
                await ws.send(s.payload(m, size))
            await ws.recv()
    return messages * per_message


async def measure(server: Server, r: aioredis.Redis, key: str, kind: tuple, scale: float, named: bool
                  ) -> tuple[float, float]:
    """Server and Redis CPU per entry (µs) of one round."""
    _, per_message, size, full = kind
    messages = max(5, int(full * scale))
    query = {"producer": key, "seq": 1} if named else {}
    before = server_cpu_ns(server), await redis_cpu_ns(r)
    entries = await push_round(server, key, per_message, size, messages, query)
    after = server_cpu_ns(server), await redis_cpu_ns(r)
    await r.delete(key)
    return (after[0] - before[0]) / entries / 1e3, (after[1] - before[1]) / entries / 1e3


async def run(repeats: int, scale: float) -> tuple[list[tuple], list[tuple]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="ptgstore-bench-redis-") as directory, \
            PrivateRedis(Path(directory)) as private, Server(private.url) as server:
        r = aioredis.Redis.from_url(private.url)
        try:
            rows_here = await in_process(private.url, repeats, scale)
            print("  in one process: done", file=sys.stderr, flush=True)
            for k, kind in enumerate(KINDS):
                figures: dict[bool, list] = {False: [], True: []}
                for rep in range(repeats):
                    for named in ((False, True) if rep % 2 == 0 else (True, False)):  # neither always first
                        key = f"k{k}-r{rep}-{'named' if named else 'plain'}"
                        figures[named].append(await measure(server, r, key, kind, scale, named))
                rows.append((kind[0], figures))
                print(f"  {kind[0]}: done", file=sys.stderr, flush=True)
        finally:
            await r.aclose()
    return rows, rows_here


async def in_process(url: str, repeats: int, scale: float) -> list[tuple]:
    """The same pushes without the sockets, from this process into the store: this process's CPU per
    entry (`time.process_time`: the named path's own Python, and the wait for the longer reply) and
    Redis's. Far steadier than the server's figures, which share the machine with the pushing
    client."""
    store = Store(url, default_max_len=100_000)
    producers = Producers(store, 3600, 64)
    r = aioredis.Redis.from_url(url)
    rows = []
    try:
        for k, (name, per_message, size, full) in enumerate(KINDS):
            messages = max(5, int(full * scale))
            figures: dict[bool, list] = {False: [], True: []}
            for rep in range(repeats):
                for named in ((False, True) if rep % 2 == 0 else (True, False)):
                    sid = f"p{k}-r{rep}-{'named' if named else 'plain'}"
                    add = producers.session(sid, "bench", "1").add if named else store.add
                    batches = [[(sid, "*", s.payload(m * per_message + i, size)) for i in range(per_message)]
                               for m in range(messages)]
                    before = time.process_time(), await redis_cpu_ns(r)
                    for batch in batches:
                        await add(batch)
                    after = time.process_time(), await redis_cpu_ns(r)
                    entries = messages * per_message
                    if await r.xlen(sid) != entries:
                        raise SystemExit(f"!!! LOST: {sid} holds {await r.xlen(sid)} of {entries} entries")
                    figures[named].append(((after[0] - before[0]) * 1e6 / entries,
                                           (after[1] - before[1]) / entries / 1e3))
                    await r.delete(sid)
            rows.append((name, figures))
    finally:
        await r.aclose()
        await store.close()
    return rows


def table(rows: list[tuple], side: str = "server") -> list[str]:
    lines = [f"| push (ack) | {side} µs/entry plain | named | change | Redis µs/entry plain | named | change |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, figures in rows:
        cells = []
        for side in (0, 1):
            plain = statistics.median(f[side] for f in figures[False])
            named = statistics.median(f[side] for f in figures[True])
            cells += [f"{plain:.1f}", f"{named:.1f}", f"{100 * (named / plain - 1):+.1f} %"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.producers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds at a fifth of the work")
    parser.add_argument("--repeats", type=int, help="rounds of each, plain and named (default 7, --quick 3)")
    parser.add_argument("--scale", type=float, help="fraction of the full work per round (default 1, --quick 0.2)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    scale = args.scale or (0.2 if args.quick else 1.0)
    started = time.monotonic()
    rows, rows_here = asyncio.run(run(repeats, scale))
    print(f"\nidempotent pushes: medians of {repeats} alternating rounds, scale {scale:g} "
          f"({time.monotonic() - started:.0f} s)\n\nthrough the server's push sockets:\n")
    print("\n".join(table(rows)))
    print("\ninto the store from one process (no sockets):\n")
    print("\n".join(table(rows_here, "process")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
