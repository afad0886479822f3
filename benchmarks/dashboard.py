"""What open dashboards cost the server: its CPU (and Redis's) with and without N dashboards.

A dashboard's requests, as the page makes them: `GET /status/streams` once a second (the overview,
every stream's summary), `GET /status` once a second (the server panel), and one camera preview (a
`latest=true` pull acknowledged at most 10 times a second). The load they watch: one camera at
30 frames/s of 100 KiB, ten sensors at 50 entries/s of 1 KiB, and idle streams up to `--streams`.
For comparison, the same number of MJPEG viewers (`<img src=/mjpeg/main>`, every frame).

    python -m benchmarks.dashboard [--dashboards 10] [--seconds 10] [--streams 500]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import redis
from websockets.asyncio.client import connect

from .harness import PrivateRedis, Server, cpu_seconds

CAMERA_HZ, CAMERA_BYTES = 30, 100 * 1024
SENSORS, SENSOR_HZ, SENSOR_BYTES = 10, 50, 1024
PREVIEW_HZ = 10


async def pusher(server: Server, sid: str, hz: float, size: int, stop: asyncio.Event) -> None:
    """Push `size`-byte entries at `hz` (acknowledged) until `stop`."""
    frame = b"\xff\xd8\xff" + os.urandom(size - 5) + b"\xff\xd9"
    async with connect(f"{server.ws_url}/data/{sid}/push?ack=true&token={server.token}", compression=None,
                       max_size=None) as ws:
        period, next_at = 1 / hz, time.monotonic()
        while not stop.is_set():
            await ws.send(frame)
            await ws.recv()
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def dashboard(server: Server, stop: asyncio.Event, latencies: list[float]) -> None:
    """One open dashboard's request pattern."""
    headers = {"Authorization": f"Bearer {server.token}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as http:
        async def poll():
            while not stop.is_set():
                started = time.perf_counter()
                (await http.get("/status/streams")).raise_for_status()
                latencies.append(time.perf_counter() - started)
                (await http.get("/status")).raise_for_status()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

        async def preview():
            url = f"{server.ws_url}/data/main/pull?last_entry_id=*&latest=true&ack=true&token={server.token}"
            async with connect(url, compression=None, max_size=None) as ws:
                while not stop.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(ws.recv(), 2)  # header
                        await asyncio.wait_for(ws.recv(), 2)  # blob
                    await asyncio.sleep(1 / PREVIEW_HZ)
                    await ws.send("ack")

        await asyncio.gather(poll(), preview())


async def mjpeg_viewer(server: Server, stop: asyncio.Event) -> None:
    """An `<img>` on /mjpeg/main: reads every part as fast as it comes."""
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream("GET", f"{server.url}/mjpeg/main", params={"token": server.token}) as response:
            async for _ in response.aiter_raw():
                if stop.is_set():
                    return


async def measure(server: Server, redis_pid: int, seconds: float, clients) -> tuple[float, float]:
    """Server and Redis CPU (% of one core) over `seconds` while `clients` run."""
    stop = asyncio.Event()
    tasks = [asyncio.get_running_loop().create_task(client(stop)) for client in clients]
    await asyncio.sleep(2)  # settle: sockets open, first polls done
    server_cpu, redis_cpu, started = server.cpu(), cpu_seconds([redis_pid]), time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    result = ((server.cpu() - server_cpu) / elapsed * 100, (cpu_seconds([redis_pid]) - redis_cpu) / elapsed * 100)
    stop.set()
    for task in asyncio.as_completed(tasks, timeout=30):
        with contextlib.suppress(Exception):
            await task
    return result


async def run(args) -> None:
    with tempfile.TemporaryDirectory(prefix="ptgstore-dash-bench-") as tmp, PrivateRedis(Path(tmp)) as store, \
            Server(store.url, max_len=1000) as server:
        with redis.Redis.from_url(store.url) as client:  # idle streams, for the overview to list
            pipe = client.pipeline(transaction=False)
            for i in range(max(0, args.streams - 1 - SENSORS)):
                pipe.xadd(f"idle/{i:04d}", {"d": b"x" * 64})
            pipe.execute()
        stop_load = asyncio.Event()
        load = [asyncio.get_running_loop().create_task(pusher(server, "main", CAMERA_HZ, CAMERA_BYTES, stop_load))]
        load += [asyncio.get_running_loop().create_task(pusher(server, f"sensor/{i}", SENSOR_HZ, SENSOR_BYTES, stop_load))
                 for i in range(SENSORS)]
        rows = []
        try:
            base = await measure(server, store.process.pid, args.seconds, [])
            rows.append(("none (load only)", base, None))
            for n in sorted({1, args.dashboards}):
                latencies: list[float] = []
                dash = await measure(server, store.process.pid, args.seconds,
                                     [lambda stop: dashboard(server, stop, latencies) for _ in range(n)])
                rows.append((f"{n} dashboard{'s' if n > 1 else ''}", dash, latencies))
            viewers = await measure(server, store.process.pid, args.seconds,
                                    [lambda stop: mjpeg_viewer(server, stop) for _ in range(args.dashboards)])
            rows.append((f"{args.dashboards} MJPEG viewers", viewers, None))
        finally:
            stop_load.set()
            await asyncio.gather(*load, return_exceptions=True)
    print(f"\nload: 1 camera {CAMERA_HZ}/s x {CAMERA_BYTES // 1024} KiB, {SENSORS} sensors {SENSOR_HZ}/s x "
          f"{SENSOR_BYTES} B, {args.streams} streams in all; {args.seconds:.0f} s per row; {os.cpu_count()} cores")
    print("| watching | server CPU % | + vs none | Redis CPU % | + vs none | /status/streams p50 ms | p95 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (server_cpu, redis_cpu), latencies in rows:
        p50 = p95 = "–"
        if latencies:
            ordered = sorted(latencies)
            p50 = f"{statistics.median(ordered) * 1000:.1f}"
            p95 = f"{ordered[int(len(ordered) * 0.95) - 1] * 1000:.1f}"
        print(f"| {name} | {server_cpu:.1f} | {server_cpu - base[0]:+.1f} | {redis_cpu:.1f} | "
              f"{redis_cpu - base[1]:+.1f} | {p50} | {p95} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dashboards", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=500)
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
