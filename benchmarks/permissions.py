"""What permission checks cost on the push path: with and without a scoped token.

    python -m benchmarks.permissions [--batches 2000] [--per-batch 64] [--repeats 3]

Two measurements, printed as tables:

1. the check itself, in this process: what the push route runs per `*` batch
   (`Scope.require("write", {streams of the batch})`), per entry, for a token with every
   permission and for a token limited to patterns, with each stream's verdict remembered and
   (as for a token's first batch) not yet remembered;
2. the server's CPU per entry pushed: `ptgstore serve` in a process of its own, batches of entries
   for 8 streams over one `/data/*/push` socket with acks, once with a token with every permission
   and once with a token derived from it (`POST /token/derive`, write `bench:*` and `*:main`),
   alternating, the server's user+system CPU read from /proc.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from websockets.sync.client import connect

from benchmarks.harness import PrivateRedis, Server
from ptgstore.permissions import EVERYTHING, Rights, Scope

STREAMS = [f"bench:s{i}" for i in range(7)] + ["lab:main"]
PATTERNS = ("bench:*", "*:main")


def batch(per_batch: int, size: int = 64) -> tuple[str, bytes]:
    """A `*` batch: entries spread over the 8 streams, a JSON header of [stream, start offset]."""
    header = orjson.dumps([[STREAMS[i % len(STREAMS)], i * size] for i in range(per_batch)]).decode()
    return header, bytes(per_batch * size)


def check_cost(per_batch: int, rounds: int = 20_000) -> list[tuple[str, float]]:
    """ns per entry of the push route's check for one batch of `per_batch` entries over 8 streams."""
    entries = [(STREAMS[i % len(STREAMS)], "*", b"") for i in range(per_batch)]
    scoped = Scope.of(Rights(PATTERNS, PATTERNS, False))
    rows = []
    for name, scope in (("every permission", EVERYTHING), ("write bench:*, *:main", scoped)):
        start = time.process_time_ns()
        for _ in range(rounds):
            if not scope.write.everything:  # as routes/live.py: skipped for a token with every permission
                scope.require("write", {sid for sid, _, _ in entries})
        rows.append((name + ", verdicts remembered", (time.process_time_ns() - start) / (rounds * per_batch)))
    start = time.process_time_ns()
    for _ in range(rounds // 10):
        fresh = Scope.of(Rights(PATTERNS, PATTERNS, False))  # a token's first batch: nothing remembered
        fresh.require("write", {sid for sid, _, _ in entries})
    rows.append(("write bench:*, *:main, first batch (compile + match)",
                 (time.process_time_ns() - start) / (rounds // 10 * per_batch)))
    return rows


def push_cpu(server: Server, token: str, batches: int, per_batch: int) -> float:
    """The server's CPU microseconds per entry for `batches` acknowledged `*` batches."""
    header, blob = batch(per_batch)
    with connect(f"{server.ws_url}/data/*/push?ack=true&token={token}", open_timeout=10,
                 compression=None) as ws:
        ws.send(header)  # a first batch outside the measurement (the socket and the scope warm)
        ws.send(blob)
        ws.recv(timeout=30)
        before = server.cpu()
        for _ in range(batches):
            ws.send(header)
            ws.send(blob)
            ack = ws.recv(timeout=30)
            assert ack.count(",") == per_batch - 1, ack[:200]
        spent = server.cpu() - before
    return spent / (batches * per_batch) * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--per-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    print(f"## The check alone, per entry (`*` batches over {len(STREAMS)} streams)\n")
    print("| token | entries per batch | ns per entry |\n|---|---:|---:|")
    for size in (args.per_batch, 1):
        for name, ns in check_cost(size, 20_000 if size > 1 else 200_000):
            print(f"| {name} | {size} | {ns:.1f} |")

    with tempfile.TemporaryDirectory(prefix="ptgstore-bench-") as scratch, \
            PrivateRedis(Path(scratch)) as redis, Server(redis.url, max_len=10_000) as server:
        derived = httpx.post(f"{server.url}/token/derive", headers={"Authorization": f"Bearer {server.token}"},
                             data={"write": list(PATTERNS)}, timeout=10)
        derived.raise_for_status()
        tokens = {"every permission": server.token, "write bench:*, *:main": derived.json()["access_token"]}
        results: dict[str, list[float]] = {name: [] for name in tokens}
        for _ in range(args.repeats):  # alternating, so that drift of the machine hits both alike
            for name, token in tokens.items():
                results[name].append(push_cpu(server, token, args.batches, args.per_batch))
    print(f"\n## Server CPU per entry pushed ({args.batches} batches of {args.per_batch}, "
          f"{args.repeats} alternating runs each; the median, and each run)\n")
    print("| token | CPU µs per entry | runs |\n|---|---:|---|")
    for name, values in results.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {statistics.median(values):.2f} | {runs} |")
    full, scoped = (statistics.median(v) for v in results.values())
    print(f"\nscoped minus full: {scoped - full:+.2f} µs per entry (/proc CPU ticks are 10 ms: "
          f"{args.batches * args.per_batch} entries per run resolve about "
          f"{0.01 / (args.batches * args.per_batch) * 1e6:.2f} µs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
