"""Foxglove endpoint benchmark: server CPU per delivered frame, `/foxglove` against a WebSocket pull.

    python -m benchmarks.foxglove [--clients 1,10] [--frames 300] [--hz 30] [--size 65536] [--runs 2]

Each run starts a private redis-server and `ptgstore serve`, opens CLIENTS readers of one camera
stream, either pull sockets (`/data/cam/pull`) or Foxglove clients (`/foxglove`, subprotocol
foxglove.websocket.v1, one subscription each; the JPEG entries arrive as foxglove.CompressedImage,
json by default, protobuf with `images=protobuf`), and pushes FRAMES JPEG-headed frames of SIZE bytes at HZ on one acknowledged push socket.
The server's CPU time (user + system, from /proc) over the push is divided by the frames delivered
to all readers; the push itself is in both columns alike. Every delivered frame is checked
byte-exact, and its latency measured from just before its push to its arrival. The three kinds
alternate within each run; the table prints one row per run and kind, then the ratio of the medians.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import random
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import orjson
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from websockets.asyncio.client import connect

from benchmarks.harness import PrivateRedis, Server
from benchmarks.scenarios import percentile

SUBPROTOCOL = "foxglove.websocket.v1"
READY_TIMEOUT = 30.0
KINDS = ("pull", "foxglove", "protobuf")  # protobuf: /foxglove?images=protobuf
WARMUP = 2**32 - 1  # the frame number of warm-up frames
LIMIT_SLACK = 30.0  # seconds a run may take beyond its push time before it is abandoned


def frames(count: int, size: int) -> list[bytes]:
    """Distinct JPEG-headed frames: a counter in the last 4 bytes."""
    body = b"\xff\xd8\xff\xe0" + random.Random(7).randbytes(size - 8)
    return [body + struct.pack("<I", i) for i in range(count)]


class Reader:
    """One reading client: the frame numbers it got, when, and whether each was exact."""

    def __init__(self):
        self.arrivals: dict[int, float] = {}
        self.wrong = 0
        self.subscribed = asyncio.Event()  # a warm-up frame came through

    def got(self, data: bytes, expected: list[bytes]) -> None:
        number = struct.unpack("<I", data[-4:])[0]
        if number == WARMUP:
            self.subscribed.set()
        elif number < len(expected) and data == expected[number]:
            self.arrivals[number] = time.perf_counter()
        else:
            self.wrong += 1


async def pull_reader(server: Server, reader: Reader, expected: list[bytes], done: asyncio.Event) -> None:
    url = f"{server.ws_url}/data/cam/pull?token={server.token}"
    async with connect(url, max_size=None, compression=None) as ws:
        while not done.is_set():
            header = orjson.loads(await ws.recv())
            blob = await ws.recv()
            starts = [item[2] for item in header] + [len(blob)]
            for start, end in zip(starts, starts[1:]):
                reader.got(blob[start:end], expected)


async def foxglove_reader(server: Server, reader: Reader, expected: list[bytes], done: asyncio.Event,
                          protobuf: bool = False) -> None:
    url = f"{server.ws_url}/foxglove?token={server.token}" + ("&images=protobuf" if protobuf else "")
    async with connect(url, subprotocols=[SUBPROTOCOL], max_size=None, compression=None) as ws:
        channel = None
        while channel is None:
            message = orjson.loads(await ws.recv())
            if message["op"] == "advertise":
                channel = next((c["id"] for c in message["channels"] if c["topic"] == "cam"), None)
        await ws.send(orjson.dumps({"op": "subscribe", "subscriptions": [{"id": 1, "channelId": channel}]}).decode())
        while not done.is_set():
            message = await ws.recv()
            if isinstance(message, bytes):
                if protobuf:  # a foxglove.CompressedImage message, decoded by Foxglove's own class
                    reader.got(CompressedImage.FromString(message[13:]).data, expected)
                else:
                    reader.got(base64.b64decode(orjson.loads(message[13:])["data"]), expected)


async def one_run(server: Server, kind: str, clients: int, count: int, hz: float, size: int) -> dict:
    expected = frames(count, size)
    warmup = frames(1, size)[0][:-4] + struct.pack("<I", WARMUP)
    readers = [Reader() for _ in range(clients)]
    done = asyncio.Event()
    if kind == "pull":
        tasks = [asyncio.ensure_future(pull_reader(server, reader, expected, done)) for reader in readers]
    else:
        tasks = [asyncio.ensure_future(foxglove_reader(server, reader, expected, done, kind == "protobuf"))
                 for reader in readers]
    sent: dict[int, float] = {}
    async with connect(f"{server.ws_url}/data/cam/push?ack=true&token={server.token}", max_size=None,
                       compression=None) as push:
        # the readers are subscribed once each has had a warm-up frame
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(r.subscribed.is_set() for r in readers):
            if time.monotonic() > deadline or any(t.done() for t in tasks):
                raise RuntimeError(f"{kind} readers not ready: {[t.exception() for t in tasks if t.done()]}")
            await push.send(warmup)
            await push.recv()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # (the last warm-up frames are read)
        cpu_before = server.cpu()
        start = time.monotonic()
        for i, frame in enumerate(expected):
            delay = start + i / hz - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[i] = time.perf_counter()
            await push.send(frame)
            await push.recv()
        limit = time.monotonic() + LIMIT_SLACK
        while sum(len(r.arrivals) for r in readers) < count * clients and time.monotonic() < limit:
            await asyncio.sleep(0.05)
        cpu = server.cpu() - cpu_before
    done.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    delivered = sum(len(r.arrivals) for r in readers)
    latencies = [(r.arrivals[i] - sent[i]) * 1000 for r in readers for i in r.arrivals]
    return {"kind": kind, "clients": clients, "delivered": delivered, "expected": count * clients,
            "wrong": sum(r.wrong for r in readers), "cpu_us": cpu / max(delivered, 1) * 1e6,
            "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)}


async def main_async(args) -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="ptgstore-fox-bench-") as tmp, PrivateRedis(Path(tmp)) as redis:
        for clients in args.clients:
            for run in range(args.runs):
                for kind in (KINDS if run % 2 == 0 else KINDS[::-1]):
                    with Server(redis.url) as server:
                        row = await one_run(server, kind, clients, args.frames, args.hz, args.size)
                    row["run"] = run + 1
                    rows.append(row)
                    print(f"{row['clients']:>7} {row['run']:>3} {kind:>8} {row['delivered']:>6}/{row['expected']:<6} "
                          f"{row['wrong']:>5} {row['cpu_us']:>12.0f} {row['p50']:>8.1f} {row['p99']:>8.1f}",
                          flush=True)
        failed = False
        print("\nclients  pull us/frame  json us/frame  ratio  protobuf us/frame  ratio  (medians; ratio to pull)")
        for clients in args.clients:
            pull, fox, pb = (statistics.median(r["cpu_us"] for r in rows if r["clients"] == clients and r["kind"] == k)
                             for k in KINDS)
            print(f"{clients:>7} {pull:>14.0f} {fox:>14.0f} {fox / pull:>6.2f} {pb:>18.0f} {pb / pull:>6.2f}")
        failed = any(r["delivered"] != r["expected"] or r["wrong"] for r in rows)
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,10", help="comma-separated reader counts")
    parser.add_argument("--frames", type=int, default=300, help="frames pushed per run (bounded)")
    parser.add_argument("--hz", type=float, default=30.0)
    parser.add_argument("--size", type=int, default=64 * 1024, help="bytes per frame")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    if not (1 <= args.frames <= 100_000 and 1 <= max(args.clients) <= 1000 and args.size >= 16):
        parser.error("--frames 1..100000, --clients 1..1000, --size >= 16")
    print("clients run     kind delivered      wrong  server us/frame  p50 ms   p99 ms")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
