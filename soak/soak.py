"""A bounded soak: pushers at a steady rate, many pullers, then an exact account of every entry.

    python soak/soak.py                      # 60 s, 8 pushers at 30 Hz, 100 pullers, own server
    python soak/soak.py --duration 20 --pullers 20
    python soak/soak.py --url http://127.0.0.1:7890 --token "$TOKEN"   # against a running server

Without --url it starts `python -m ptgstore serve` (embedded Redis) in a temporary data
directory on a free loopback port and stops it afterwards. Every pusher pushes with
`ack=true` to a stream of its own; every puller opens with `last_entry_id=$` before the
first push and must receive exactly the acknowledged entries of its streams: none lost,
none twice, in id order, byte-exact. Prints a table per stream, delivery latency, and the
server's (and embedded Redis's) resident memory at start, during and at the end.
Exit status 1 when anything was lost, duplicated, reordered or altered.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
from websockets.asyncio.client import connect

from ptgstore.testing import free_port

STAMP = struct.Struct("!Qd")  # sequence number, send time (epoch seconds)


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of a process in MiB (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time a process has used (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def id_pair(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


# -- the server under test ---------------------------------------------------------------------------

class OwnServer:
    """`python -m ptgstore serve` with its embedded Redis in a temporary data directory."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ptgstore-soak-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PTGSTORE_")}
        env["PTGSTORE_LOG_LEVEL"] = "warning"
        self.log = open(self.dir / "server.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ptgstore", "serve", "--port", str(self.port), "--data-dir", str(self.dir / "data")],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited:\n{(self.dir / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/ping", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # polling a process that is starting (a script, not a test)
        raise SystemExit("server did not answer /ping in time")

    def token(self) -> str:
        reply = httpx.post(self.url + "/token", data={"username": "soak", "password": "soak"}, timeout=10)
        reply.raise_for_status()
        return reply.json()["access_token"]

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def redis_pid(self) -> int | None:
        try:
            return json.loads((self.dir / "data" / "redis" / "state.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None

    def stop(self) -> None:
        redis_pid = self.redis_pid()
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if redis_pid and rss_mib(redis_pid) is not None:  # the server normally stops its Redis itself
            os.kill(redis_pid, signal.SIGTERM)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- clients ---------------------------------------------------------------------------------------------

@dataclass
class Pusher:
    sid: str
    acked: list[str] = field(default_factory=list)
    digests: dict[str, bytes] = field(default_factory=dict)
    ack_latency: list[float] = field(default_factory=list)
    late: int = 0  # pushes that started more than half a period behind schedule


@dataclass
class Puller:
    sids: list[str]
    received: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    latency: list[float] = field(default_factory=list)
    error: str | None = None


async def push_loop(ws_url: str, token: str, pusher: Pusher, rate: float, size: int, stop_at: float) -> None:
    period = 1.0 / rate
    filler = os.urandom(max(size - STAMP.size, 0))
    async with connect(f"{ws_url}/data/{pusher.sid}/push?ack=true&token={token}", max_size=None,
                       compression=None, open_timeout=30) as ws:
        next_tick = time.monotonic()
        seq = 0
        while next_tick < stop_at:
            delay = next_tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the pace of a headset's sensor, not synchronisation
            elif delay < -period / 2:
                pusher.late += 1
            payload = STAMP.pack(seq, time.time()) + filler[: (seq * 7919) % len(filler)] if filler else \
                STAMP.pack(seq, time.time())
            sent = time.perf_counter()
            await ws.send(payload)
            entry_id = await asyncio.wait_for(ws.recv(), 30)
            pusher.ack_latency.append(time.perf_counter() - sent)
            pusher.acked.append(entry_id)
            pusher.digests[entry_id] = hashlib.blake2b(payload, digest_size=16).digest()
            seq += 1
            next_tick += period


async def pull_loop(ws_url: str, token: str, puller: Puller, opened: asyncio.Event, done: asyncio.Event) -> None:
    puller.received = {sid: [] for sid in puller.sids}
    try:
        async with connect(f"{ws_url}/data/{'+'.join(puller.sids)}/pull?count=100&last_entry_id=$&token={token}",
                           max_size=None, compression=None, open_timeout=60) as ws:
            opened.set()
            while not done.is_set():
                try:
                    header = await asyncio.wait_for(ws.recv(), 0.5)
                except asyncio.TimeoutError:
                    continue
                blob = await asyncio.wait_for(ws.recv(), 30)
                now = time.time()
                items = orjson.loads(header)
                ends = [item[2] for item in items[1:]] + [len(blob)]
                for (sid, entry_id, start), end in zip(items, ends):
                    data = blob[start:end]
                    puller.received[sid].append((entry_id, hashlib.blake2b(data, digest_size=16).digest()))
                    puller.latency.append(now - STAMP.unpack_from(data)[1])
    except Exception as exc:  # reported in the summary
        puller.error = repr(exc)
        opened.set()


def caught_up(pullers: list[Puller], pushers: dict[str, Pusher]) -> bool:
    for puller in pullers:
        for sid in puller.sids:
            acked = pushers[sid].acked
            got = puller.received.get(sid, [])
            if acked and (not got or id_pair(got[-1][0]) < id_pair(acked[-1])):
                return False
    return True


# -- the run ---------------------------------------------------------------------------------------------

def puller_streams(index: int, streams: list[str]) -> list[str]:
    """Most pullers follow one stream; every fifth follows two (one socket, several streams)."""
    first = streams[index % len(streams)]
    if index % 5 == 4 and len(streams) > 1:
        return [first, streams[(index + 3) % len(streams)]]
    return [first]


async def soak(args, url: str, token: str, pids) -> int:
    ws_url = url.replace("http", "ws", 1)
    run = f"soak{int(time.time())}"
    streams = [f"{run}-{i}" for i in range(args.pushers)]
    pushers = {sid: Pusher(sid) for sid in streams}
    pullers = [Puller(puller_streams(i, streams)) for i in range(args.pullers)]
    done = asyncio.Event()
    opened = [asyncio.Event() for _ in pullers]
    pull_tasks = [asyncio.create_task(pull_loop(ws_url, token, p, o, done)) for p, o in zip(pullers, opened)]
    await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 120)
    def sample(label, t):
        return (label, t, rss_mib(pids[0]), rss_mib(pids[1]()), cpu_seconds(pids[0]), cpu_seconds(os.getpid()))

    memory = [sample("start", 0.0)]
    started = time.monotonic()
    stop_at = started + args.duration
    push_tasks = [asyncio.create_task(push_loop(ws_url, token, p, args.rate, args.size, stop_at))
                  for p in pushers.values()]

    async def sample_memory():
        while True:
            await asyncio.sleep(args.sample)  # a sampling interval, not synchronisation
            memory.append(sample("run", time.monotonic() - started))

    sampler = asyncio.create_task(sample_memory())
    push_errors = [r for r in await asyncio.gather(*push_tasks, return_exceptions=True) if r is not None]
    pushed_in = time.monotonic() - started
    deadline = time.monotonic() + args.drain
    while not caught_up(pullers, pushers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # polling the pullers' progress, bounded by --drain
    drained_in = time.monotonic() - started - pushed_in
    sampler.cancel()
    memory.append(sample("end", time.monotonic() - started))
    done.set()
    await asyncio.gather(*pull_tasks, return_exceptions=True)
    return report(args, pushers, pullers, memory, push_errors, pushed_in, drained_in)


def report(args, pushers, pullers, memory, push_errors, pushed_in, drained_in) -> int:
    late = sum(p.late for p in pushers.values())
    ticks = sum(len(p.acked) for p in pushers.values())
    print(f"\nsoak: {args.pushers} pushers at {args.rate:g} Hz (entries up to {args.size} B), {args.pullers} pullers, "
          f"{args.duration:g} s of pushing (took {pushed_in:.1f} s; {late} of {ticks} pushes started late), "
          f"drained in {drained_in:.2f} s\n")
    print(f"{'stream':<22}{'acked':>7}{'pullers':>9}{'delivered':>11}{'lost':>7}{'dup':>6}{'order':>7}"
          f"{'altered':>9}{'push Hz':>9}{'ack p50 ms':>12}{'ack p99 ms':>12}")
    totals = {"lost": 0, "dup": 0, "order": 0, "altered": 0}
    for sid, pusher in pushers.items():
        acked = pusher.acked
        acked_set = set(acked)
        following = [p for p in pullers if sid in p.sids]
        lost = dup = order = altered = delivered = 0
        for puller in following:
            got = puller.received.get(sid, [])
            ids = [entry_id for entry_id, _ in got]
            delivered += len(ids)
            lost += len(acked_set - set(ids))
            dup += len(ids) - len(set(ids))
            order += sum(1 for a, b in zip(ids, ids[1:]) if id_pair(b) <= id_pair(a))
            altered += sum(1 for entry_id, digest in got if pusher.digests.get(entry_id) != digest)
        for key, value in zip(totals, (lost, dup, order, altered)):
            totals[key] += value
        lat = sorted(pusher.ack_latency) or [0.0]
        print(f"{sid:<22}{len(acked):>7}{len(following):>9}{delivered:>11}{lost:>7}{dup:>6}{order:>7}{altered:>9}"
              f"{len(acked) / pushed_in:>9.1f}{lat[len(lat) // 2] * 1000:>12.2f}"
              f"{lat[int(len(lat) * 0.99)] * 1000:>12.2f}")
    latency = sorted(x for p in pullers for x in p.latency) or [0.0]
    print(f"\ndelivery latency (push sent -> puller received): p50 {statistics.median(latency) * 1000:.1f} ms, "
          f"p99 {latency[int(len(latency) * 0.99)] * 1000:.1f} ms, max {latency[-1] * 1000:.1f} ms "
          f"over {len(latency)} deliveries")
    print(f"\n{'memory':<8}{'t (s)':>8}{'server RSS MiB':>16}{'redis RSS MiB':>15}{'server CPU %':>14}"
          f"{'soak CPU %':>12}")
    previous = memory[0]
    for label, t, server, redis_rss, server_cpu, own_cpu in memory:
        fmt = lambda v: f"{v:.1f}" if v is not None else "-"  # noqa: E731
        span = t - previous[1]

        def share(now, before):
            return fmt((now - before) / span * 100) if span > 0 and None not in (now, before) else "-"

        print(f"{label:<8}{t:>8.1f}{fmt(server):>16}{fmt(redis_rss):>15}{share(server_cpu, previous[4]):>14}"
              f"{share(own_cpu, previous[5]):>12}")
        previous = (label, t, server, redis_rss, server_cpu, own_cpu)
    errors = [p.error for p in pullers if p.error] + [repr(e) for e in push_errors]
    for error in errors[:10]:
        print(f"client error: {error}")
    print(f"\ntotal: lost {totals['lost']}, duplicated {totals['dup']}, out of order {totals['order']}, "
          f"altered {totals['altered']}, client errors {len(errors)}")
    return 0 if not any(totals.values()) and not errors else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of pushing (default 60)")
    parser.add_argument("--pushers", type=int, default=8)
    parser.add_argument("--rate", type=float, default=30.0, help="pushes per second per pusher (default 30)")
    parser.add_argument("--pullers", type=int, default=100)
    parser.add_argument("--size", type=int, default=4096, help="largest entry in bytes (sizes vary up to it)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds allowed for pullers to catch up")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--url", help="a running server instead of one started here")
    parser.add_argument("--token", help="token for --url (default: log in as soak/soak, the dev policy)")
    args = parser.parse_args(argv)
    if not (0 < args.duration <= 3600 and 0 < args.rate <= 1000 and 1 <= args.pushers <= 256
            and 0 <= args.pullers <= 2000 and args.size >= STAMP.size):
        parser.error("out of bounds: duration <= 3600 s, rate <= 1000 Hz, pushers <= 256, pullers <= 2000, "
                     f"size >= {STAMP.size}")
    server = None
    if args.url:
        url = args.url.rstrip("/")
        token = args.token or httpx.post(url + "/token", data={"username": "soak", "password": "soak"},
                                         timeout=10).json()["access_token"]
        pids = (None, lambda: None)
    else:
        server = OwnServer()
        server.start()
        url, token = server.url, server.token()
        pids = (server.pid, server.redis_pid)
    try:
        return asyncio.run(soak(args, url, token, pids))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
