"""Recording benchmark: does the recorder keep up with N headsets, and how exact is replay pacing?

    python -m benchmarks.recording [--headsets 8] [--seconds 20] [--runs 3] [--processes 2]

Each run starts a private redis-server and `ptgstore serve` (default retention: 1000 entries per
stream), starts a recording, and pushes for SECONDS from every headset: camera 100 KiB at 30 Hz,
depth 180 KiB at 5 Hz, IMU 128 B at 100 Hz (incompressible bytes; one acknowledged push socket
per stream). Then it stops the recording, reads the MCAP files back and checks that every
acknowledged entry is there once, byte-exact (a hash per entry). Then the recording is replayed at
recorded speed into `replay:` streams, and the replayed entries (their ids: arrival times in
milliseconds) are compared with the recorded ones: the error of each interval between consecutive
entries, and each entry's distance from the replay's steady schedule (its lag behind the recorded
time less the stream's median lag). Prints one table row per run, then the medians.

Then, with `--processes 2` (the default), the recorders of several processes: one process taking
HEADSETS headsets' pushes without recording (the baseline: the rest is the recorder's CPU), the same
recording, two `ptgstore serve` processes (their own data directories, one shared
recordings directory, the headsets' pushes spread over both) recording twice as many, and two
processes recording HEADSETS headsets (all pushed through the first) with the second killed
(SIGKILL) halfway: its shards are taken over by the first. Each row: entries, missing, extra, the
processes that wrote segments, and the CPU of every server process per recorded entry.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from benchmarks.harness import PrivateRedis, Server, cpu_seconds, wait_for
from benchmarks.scenarios import percentile
from ptgstore.recordings.mcapfiles import read_messages

SENSORS = (("main", 100 * 1024, 30.0), ("depth", 180 * 1024, 5.0), ("imu", 128, 100.0))
VARIANTS = 16  # distinct payloads per stream (a counter makes every entry unique)


def payloads(size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    magic = b"\xff\xd8\xff\xe0" if size > 1024 else b""
    return [magic + rng.randbytes(size - len(magic)) for _ in range(VARIANTS)]


async def push_stream(ws_url: str, token: str, sid: str, size: int, hz: float, seconds: float, seed: int,
                      acked: dict) -> float:
    """Push at `hz` for `seconds` (late entries go at once); the worst lateness in seconds."""
    variants = payloads(size, seed)
    worst = 0.0
    async with connect(f"{ws_url}/data/{sid}/push?ack=true&token={token}", max_size=None, compression=None) as ws:
        start = time.monotonic()
        i = 0
        while True:
            due = start + i / hz
            if due - start >= seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                worst = max(worst, -delay)
            data = i.to_bytes(4, "big") + variants[i % VARIANTS]
            await ws.send(data)
            acked[sid].append((await ws.recv(), hashlib.blake2b(data, digest_size=16).digest()))
            i += 1
    return worst


def ms_of(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


async def replay_pacing(server: Server, http: httpx.Client, rec_id: str, got: dict[str, list]) -> dict:
    sids = sorted(got)
    for sid in sids:
        http.put(f"/streams/replay:{sid}", json={"max_len": 1_000_000})
    url = f"{server.ws_url}/recordings/replay?rec_id={rec_id}&prefix=replay:&interval=5&token={server.token}"
    started = time.monotonic()
    async with connect(url, max_size=None) as ws:
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    took = time.monotonic() - started
    interval_errors, offset_errors = [], []
    return_value = {"replay_s": took}
    for sid in sids:
        recorded = [ms_of(i) for i, _ in got[sid]]
        replayed = [ms_of(i) for i, _ in read_ids(http, f"replay:{sid}")]
        if len(recorded) != len(replayed):
            return_value["replay_count_mismatch"] = True
        n = min(len(recorded), len(replayed))
        for k in range(1, n):
            interval_errors.append(abs((replayed[k] - replayed[k - 1]) - (recorded[k] - recorded[k - 1])))
        # how far each entry is from the replay's steady schedule: its lag behind the recorded time,
        # less the stream's median lag (a late first entry does not skew every other one)
        lags = [replayed[k] - recorded[k] for k in range(n)]
        typical = statistics.median(lags) if lags else 0
        offset_errors += [abs(lag - typical) for lag in lags]
    return_value.update(interval_p50=percentile(interval_errors, 0.5), interval_p99=percentile(interval_errors, 0.99),
                        offset_p50=percentile(offset_errors, 0.5), offset_p99=percentile(offset_errors, 0.99))
    return return_value


def read_ids(http: httpx.Client, sid: str) -> list[tuple[str, int]]:
    out, cursor = [], "0"
    while True:
        reply = http.get(f"/data/{sid}", params={"last_entry_id": cursor, "count": 2000})
        header = orjson.loads(reply.headers["entry-offset"])
        if not header:
            return out
        out += [(item[1], item[2]) for item in header]
        cursor = header[-1][1]


async def one_run(args, run: int) -> dict:
    import tempfile
    with tempfile.TemporaryDirectory(prefix="ptgstore-rec-bench-") as tmp, PrivateRedis(Path(tmp)) as redis_server, \
            Server(redis_server.url, max_len=1000) as server:
        http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=120)
        rec_id = f"bench-{run}"
        http.put("/recordings/start", params={"rec_id": rec_id}).raise_for_status()
        sids = [f"h{h}:{name}" for h in range(args.headsets) for name, _, _ in SENSORS]
        acked: dict[str, list] = {sid: [] for sid in sids}
        cpu0, t0 = server.cpu(), time.monotonic()
        jobs = [push_stream(server.ws_url, server.token, f"h{h}:{name}", size, hz, args.seconds, h * 10 + k, acked)
                for h in range(args.headsets) for k, (name, size, hz) in enumerate(SENSORS)]
        lateness = await asyncio.gather(*jobs)
        pushed_s = time.monotonic() - t0
        stop_started = time.monotonic()
        http.put("/recordings/stop").raise_for_status()
        drain = time.monotonic() - stop_started
        cpu = server.cpu() - cpu0
        info = http.get(f"/recordings/{rec_id}").json()
        rec_dir = Path(server._data.name) / "recordings" / rec_id
        got: dict[str, list] = {}
        for message in read_messages(sorted(rec_dir.glob("*.mcap"))):
            got.setdefault(message.sid, []).append((message.entry_id, hashlib.blake2b(message.data, digest_size=16).digest()))
        missing = sum(len(set(acked[s]) - set(got.get(s, []))) for s in sids)
        extra = sum(len(set(got.get(s, [])) - set(acked[s])) for s in got)
        ordered = all(got.get(s, []) == sorted(got.get(s, []), key=lambda e: tuple(map(int, e[0].split("-"))))
                      for s in got)
        entries = sum(len(v) for v in acked.values())
        size = sum(size * hz * args.seconds for _, size, hz in SENSORS) * args.headsets
        result = {
            "entries": entries, "mb_s": size / pushed_s / 1e6, "late_s": max(lateness), "missing": missing,
            "extra": extra, "ordered": ordered, "gaps": info["gaps"], "drain_s": drain, "files": len(info["files"]),
            "cpu_pct": 100 * cpu / (pushed_s + drain), "file_mb": info["size"] / 1e6,
        }
        result.update(await replay_pacing(server, http, rec_id, got))
        return result


async def scaling_run(args, processes: int, headsets: int, kill: bool, record: bool = True) -> dict:
    """One recording by `processes` processes sharing a recordings directory (see the docstring)."""
    with tempfile.TemporaryDirectory(prefix="ptgstore-rec-scale-") as tmp, PrivateRedis(Path(tmp)) as redis_server:
        env = {"PTGSTORE_RECORDINGS_DIR": str(Path(tmp) / "recordings"), "PTGSTORE_SECRET": "benchmark " * 4,
               "PTGSTORE_RECORDING_SHARDS": str(args.shards), "PTGSTORE_RECORDING_SEGMENT_SECONDS": "1"}
        with contextlib.ExitStack() as stack:
            servers = [stack.enter_context(Server(redis_server.url, max_len=1000, env=env)) for _ in range(processes)]
            http = httpx.Client(base_url=servers[0].url, headers={"Authorization": f"Bearer {servers[0].token}"},
                                timeout=120)
            wait_for(lambda: http.get("/status").json()["recordings"]["recorders_present"] == processes, 30,
                     "every process able to record")
            if record:
                http.put("/recordings/start", params={"rec_id": "scale"}).raise_for_status()
            sids = [f"h{h}:{name}" for h in range(headsets) for name, _, _ in SENSORS]
            acked: dict[str, list] = {sid: [] for sid in sids}
            pids = [pid for server in servers for pid in server.pids()]
            cpu0, t0 = cpu_seconds(pids), time.monotonic()
            targets = [servers[0]] * headsets if kill else [servers[h % processes] for h in range(headsets)]
            jobs = [push_stream(targets[h].ws_url, targets[h].token, f"h{h}:{name}", size, hz, args.seconds,
                                h * 10 + k, acked)
                    for h in range(headsets) for k, (name, size, hz) in enumerate(SENSORS)]
            killed_cpu: list[float] = []
            if kill:
                jobs.append(kill_later(servers[-1], args.seconds / 2, killed_cpu))
            await asyncio.gather(*jobs)
            if record:
                http.put("/recordings/stop").raise_for_status()
            cpu = cpu_seconds(pids) - cpu0 + sum(killed_cpu)  # (a killed process's CPU time, up to its end)
            elapsed = time.monotonic() - t0
            info = http.get("/recordings/scale").json() if record else {"writers": [], "files": [], "gaps": 0}
            got: dict[str, list] = {}
            files = sorted((Path(tmp) / "recordings" / "scale").glob("*.mcap"))
            for message in read_messages(files):
                got.setdefault(message.sid, []).append(
                    (message.entry_id, hashlib.blake2b(message.data, digest_size=16).digest()))
        entries = sum(len(v) for v in acked.values())
        return {"processes": processes, "headsets": headsets, "killed": 1 if kill else 0, "entries": entries,
                "recording": "yes" if record else "no (baseline)",
                "missing": sum(len(set(acked[s]) - set(got.get(s, []))) for s in sids) if record else 0,
                "extra": sum(len(v) - len(set(v)) for v in got.values())
                + sum(len(set(got[s]) - set(acked.get(s, []))) for s in got),
                "writers": len(info["writers"]), "files": len(info["files"]), "gaps": info["gaps"],
                "cpu_us": 1e6 * cpu / max(1, entries), "cpu_pct": 100 * cpu / elapsed}


async def kill_later(server: Server, seconds: float, cpu: list[float]) -> None:
    await asyncio.sleep(seconds)
    cpu.append(server.cpu())
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)


SCALING = [("recording", "recording", "{}"), ("processes", "processes", "{:.0f}"), ("headsets", "headsets", "{:.0f}"), ("killed", "killed", "{:.0f}"),
           ("entries", "entries", "{:.0f}"), ("missing", "missing", "{:.0f}"), ("extra", "extra", "{:.0f}"),
           ("gaps", "gaps", "{:.0f}"), ("writers", "writers", "{:.0f}"), ("files", "files", "{:.0f}"),
           ("cpu_us", "server CPU µs per entry", "{:.0f}"), ("cpu_pct", "server CPU %", "{:.0f}")]


async def scaling(args) -> bool:
    """The rows of the processes table; whether every one recorded every entry once."""
    print(f"\nrecorders of several processes ({args.shards} shards, {args.seconds:.0f} s each):")
    print("| " + " | ".join(title for _, title, _ in SCALING) + " |")
    print("|" + "---|" * len(SCALING))
    good = True
    runs = ((1, args.headsets, False, False), (1, args.headsets, False, True),
            (args.processes, args.headsets * args.processes, False, True),
            (args.processes, args.headsets * args.processes, True, True))
    for processes, headsets, kill, record in runs:
        result = await scaling_run(args, processes, headsets, kill, record)
        print("| " + " | ".join(fmt.format(result[key]) for key, _, fmt in SCALING) + " |", flush=True)
        good = good and not result["missing"] and not result["extra"]
    return good



COLUMNS = [("entries", "entries pushed", "{:.0f}"), ("mb_s", "MB/s pushed", "{:.1f}"),
           ("late_s", "push late s", "{:.2f}"), ("missing", "missing", "{:.0f}"), ("extra", "extra", "{:.0f}"),
           ("gaps", "gaps", "{:.0f}"), ("drain_s", "stop drain s", "{:.2f}"), ("files", "files", "{:.0f}"),
           ("file_mb", "file MB", "{:.0f}"), ("cpu_pct", "server CPU %", "{:.0f}"),
           ("interval_p50", "replay interval err p50 ms", "{:.0f}"),
           ("interval_p99", "p99 ms", "{:.0f}"), ("offset_p50", "replay schedule err p50 ms", "{:.0f}"),
           ("offset_p99", "p99 ms", "{:.0f}")]


def row(label: str, result: dict) -> str:
    return "| " + " | ".join([label] + [fmt.format(result[key]) for key, _, fmt in COLUMNS]) + " |"


async def main_async(args) -> int:
    print(f"recording {args.headsets} headsets for {args.seconds:.0f} s: "
          + ", ".join(f"{name} {size // 1024 or size} {'KiB' if size >= 1024 else 'B'} at {hz:.0f} Hz"
                      for name, size, hz in SENSORS))
    print("| run | " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    print("|" + "---|" * (len(COLUMNS) + 1))
    results = []
    for run in range(args.runs):
        result = await one_run(args, run)
        results.append(result)
        print(row(str(run + 1), result), flush=True)
        if not result["ordered"] or result["missing"] or result["extra"] or result.get("replay_count_mismatch"):
            print("RECORDING MISMATCH: entries missing, extra, out of order or not all replayed", file=sys.stderr)
    medians = {key: statistics.median(r[key] for r in results) for key, _, _ in COLUMNS}
    print(row("median", medians))
    bad = any(r["missing"] or r["extra"] or not r["ordered"] for r in results)
    if args.processes > 1:
        bad = not await scaling(args) or bad
    print("every acknowledged entry recorded once, byte-exact, in id order" if not bad else "RECORDING MISMATCH")
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--headsets", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="push time per run (bounded)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="then compare 1 process with this many (1: skip)")
    parser.add_argument("--shards", type=int, default=4, help="PTGSTORE_RECORDING_SHARDS of those runs")
    args = parser.parse_args(argv)
    if not (0 < args.seconds <= 120 and 0 < args.headsets <= 32 and 0 < args.runs <= 10 and 1 <= args.processes <= 4
            and 1 <= args.shards <= 64):
        parser.error("seconds 0-120, headsets 1-32, runs 1-10, processes 1-4, shards 1-64")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
