"""Scale-out figures: `python -m benchmarks.run --cluster` (or `python -m benchmarks.cluster`).

Pushers of 100 KiB frames with acks, as fast as each can go (each on its own stream, the streams in
groups spread over the masters), against: one Redis and one ptgstore process; a Redis Cluster of 1
and of 3 masters with one process; 3 masters with 2 processes (pushers alternate between them).
Prints medians of several runs: frames/s, ack latency, CPU per frame of the ptgstore processes and
of Redis, and the 30 Hz headsets that throughput amounts to. Exits 1 when an acked frame is missing.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import redis
from redis.crc import key_slot

from . import scenarios as s
from .harness import PrivateRedis, Server, cpu_seconds, free_port, wait_for
from ptgstore.embedded import find_redis_server

SLOTS = 16384
HZ = 30


class LocalCluster:
    """`masters` cluster-enabled redis-servers on loopback, slots split evenly (no persistence)."""

    def __init__(self, directory: Path, masters: int):
        self.directory = directory
        self.masters = masters
        self.processes: list[subprocess.Popen] = []
        self.ports: list[int] = []

    def __enter__(self) -> "LocalCluster":
        try:
            for i in range(self.masters):
                port, bus = free_port(), free_port()
                folder = self.directory / str(port)
                folder.mkdir()
                self.processes.append(subprocess.Popen(
                    [find_redis_server(), "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", str(folder), "--cluster-enabled", "yes",
                     "--maxclients", "4000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                self.ports.append(port)
                client = redis.Redis(port=port, socket_timeout=2)
                wait_for(lambda: _pings(client), 15, f"redis-server on {port}")
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * SLOTS // self.masters,
                                       (i + 1) * SLOTS // self.masters - 1)
                if i:
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0], _bus_of(self.ports[0]))
                client.close()
            wait_for(self._ok, 30, "cluster_state:ok")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _ok(self) -> bool:
        for port in self.ports:
            with redis.Redis(port=port, socket_timeout=2) as client:
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
        return True

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def __exit__(self, *exc_info) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait(15)


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis.RedisError:
        return False


def _bus_of(port: int) -> int:
    with redis.Redis(port=port, socket_timeout=2) as client:
        return int(client.config_get("cluster-port")["cluster-port"])


def stream_ids(pushers: int, masters: int) -> list[str]:
    """One stream per pusher, in groups spread evenly over the masters' slot ranges."""
    out, i = [], 0
    while len(out) < pushers:
        group = f"hs{i}"
        i += 1
        if masters <= 1 or key_slot(group.encode()) * masters // SLOTS == len(out) % masters:
            out.append(f"{group}:cam")
    return out


async def pusher(url: str, seconds: float, size: int, latencies: list) -> int:
    acked = 0
    async with s.ws_connect(url) as ws:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await ws.send(s.payload(acked, size))
            await ws.recv()
            latencies.append(time.perf_counter() - started)
            acked += 1
    return acked


async def one_run(servers: list, redis_pids: list, sids: list, seconds: float, size: int, verify) -> dict:
    latencies: list = []
    cpu0 = sum(server.cpu() for server in servers)
    rcpu0 = cpu_seconds(redis_pids)
    started = time.perf_counter()
    counts = await asyncio.gather(*(
        pusher(f"{servers[i % len(servers)].ws_url}/data/{sid}/push?ack=true&token={servers[0].token}",
               seconds, size, latencies) for i, sid in enumerate(sids)))
    elapsed = time.perf_counter() - started
    frames = sum(counts)
    cpu = sum(server.cpu() for server in servers) - cpu0
    rcpu = cpu_seconds(redis_pids) - rcpu0
    lost = await asyncio.to_thread(verify, dict(zip(sids, counts)))
    return {"frames/s": frames / elapsed, "p50 ms": 1e3 * s.percentile(latencies, 0.5),
            "p99 ms": 1e3 * s.percentile(latencies, 0.99), "API µs/frame": 1e6 * cpu / frames,
            "Redis µs/frame": 1e6 * rcpu / frames, "lost": lost}


def verifier(url: str, cluster: bool):
    def verify(expected: dict) -> int:
        client = redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
        try:
            lost = 0
            for sid, count in expected.items():
                key = f"{{{sid.split(':')[0]}}}{sid}" if cluster else sid
                lost += max(0, count - client.xlen(key))
                client.delete(key)
            return lost
        finally:
            client.close()
    return verify


async def measure(name: str, masters: int, apis: int, args) -> tuple[str, dict]:
    sids = stream_ids(args.pushers, masters)
    runs = []
    with tempfile.TemporaryDirectory(prefix="ptgstore-bench-cluster-") as directory, ExitStack() as stack:
        if masters:
            store = stack.enter_context(LocalCluster(Path(directory), masters))
            os.environ["PTGSTORE_REDIS_CLUSTER"] = "true"
        else:
            store = stack.enter_context(PrivateRedis(Path(directory)))
            os.environ.pop("PTGSTORE_REDIS_CLUSTER", None)
        redis_pids = store.pids() if masters else [store.process.pid]
        os.environ["PTGSTORE_SECRET"] = secrets.token_hex(32)  # one secret: tokens work on every process
        try:
            servers = [stack.enter_context(Server(store.url)) for _ in range(apis)]
        finally:
            os.environ.pop("PTGSTORE_REDIS_CLUSTER", None)
            os.environ.pop("PTGSTORE_SECRET", None)
        verify = verifier(store.url, bool(masters))
        for rep in range(args.repeats):
            runs.append(await one_run(servers, redis_pids, sids, args.seconds, args.size, verify))
            print(f"  {name} run {rep}: {runs[-1]['frames/s']:.0f} frames/s", file=sys.stderr, flush=True)
    figures = {key: s.median([run[key] for run in runs]) for key in runs[0] if key != "lost"}
    figures["lost"] = sum(run["lost"] for run in runs)
    return name, figures


CONFIGURATIONS = [
    ("1 Redis, 1 process", 0, 1),
    ("cluster 1 master, 1 process", 1, 1),
    ("cluster 3 masters, 1 process", 3, 1),
    ("cluster 3 masters, 2 processes", 3, 2),
]


async def run_all(args) -> int:
    rows = []
    for name, masters, apis in CONFIGURATIONS:
        rows.append(await measure(name, masters, apis, args))
    print(f"\n{args.pushers} pushers of {args.size // 1024} KiB frames with acks, as fast as each goes, "
          f"{args.seconds:g} s per run, medians of {args.repeats} runs; {os.cpu_count()} CPUs\n")
    print("| setup | frames/s | MB/s | headsets at 30 Hz | ack p50 ms | ack p99 ms | API CPU µs/frame "
          "| Redis CPU µs/frame | lost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, f in rows:
        print(f"| {name} | {f['frames/s']:,.0f} | {f['frames/s'] * args.size / 1e6:,.0f} | "
              f"{f['frames/s'] / HZ:,.0f} | {f['p50 ms']:.2f} | {f['p99 ms']:.2f} | {f['API µs/frame']:.0f} | "
              f"{f['Redis µs/frame']:.0f} | {f['lost']} |")
    lost = sum(f["lost"] for _, f in rows)
    if lost:
        print(f"\n!!! {lost} ACKED FRAMES MISSING !!!")
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--pushers", type=int, default=12)
    parser.add_argument("--size", type=int, default=100 * 1024)
    args = parser.parse_args(argv)
    return asyncio.run(run_all(args))


if __name__ == "__main__":
    sys.exit(main())
