"""Pushes through a bad network: the public Python client pushes camera-sized frames at 30 Hz through
a loopback proxy that cuts the connection every few hundred milliseconds (and now and then throws
away an ack the server wrote), while `ptgstore serve` is restarted once; then every frame is looked
up in Redis.

    python soak/push_faults.py                      # 60 s, cuts every 0.1-0.5 s, restart at 30 s
    python soak/push_faults.py --duration 10 --restart-at 4

Starts its own redis-server and `python -m ptgstore serve` on free loopback ports. Exit status 1
unless every frame pushed is stored exactly once, in order, byte-exact, and the ids the client
returned are the stored ones.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from ptgstore.client import Client
from ptgstore.testing import RedisServer, free_port, wait_until
from ptgstore.testproxy import CuttingProxy

SID = "headset:main"


class Serve:
    """`python -m ptgstore serve` on one port, stopped gracefully and started again on demand."""

    def __init__(self, directory: Path, redis_url: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PTGSTORE_")}
        self.env.update({"PTGSTORE_DATA_DIR": str(directory / "data"), "PTGSTORE_REDIS_URL": redis_url,
                         "PTGSTORE_MAX_LEN": "1000000", "PTGSTORE_LOG_LEVEL": "warning"})
        self.log = open(directory / "serve.log", "w")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "ptgstore", "serve", "--port", str(self.port)],
                                        env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self._ready, timeout=60, interval=0.05, what="ptgstore serve")

    def _ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"ptgstore serve exited; see {self.log.name}")
        try:
            return httpx.get(self.url + "/ping", timeout=2).json() is True
        except (httpx.HTTPError, ValueError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def restart(self) -> float:
        """Stop (SIGTERM: acks what it has, closes 1001) and start again; seconds it was away."""
        started = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - started


def push(url: str, token: str, args, serve: Serve, report: dict) -> tuple[list[str], list[bytes]]:
    ids: list[str] = []
    frames: list[bytes] = []
    restart = threading.Timer(args.restart_at, lambda: report.update(downtime=serve.restart()))
    with Client(url, token=token) as client, client.pusher() as pusher:
        started = tick = time.monotonic()
        restart.start()
        try:
            while tick - started < args.duration:
                frame = b"frame %08d " % len(frames) + os.urandom(args.size)
                ids += pusher.push(SID, frame)
                frames.append(frame)
                tick = max(tick + 1 / args.hz, time.monotonic())  # late ticks do not pile up
                time.sleep(max(0.0, tick - time.monotonic()))
        finally:
            restart.join()
        report["summary"] = pusher.summary
    return ids, frames


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of pushing (default %(default)s)")
    parser.add_argument("--hz", type=float, default=30.0, help="frames per second (default %(default)s)")
    parser.add_argument("--size", type=int, default=45 * 1024, help="bytes per frame (default %(default)s)")
    parser.add_argument("--cut-every", type=float, nargs=2, default=(0.1, 0.5), metavar=("LO", "HI"),
                        help="seconds between cuts, drawn at random between LO and HI (default 0.1 0.5)")
    parser.add_argument("--drop-acks", type=float, default=0.05,
                        help="chance that a chunk the server sends is lost with its connection (default %(default)s)")
    parser.add_argument("--restart-at", type=float, help="seconds in when the server restarts (default: half way)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.restart_at is None:
        args.restart_at = args.duration / 2
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="ptgstore-push-faults-") as tmp, \
            RedisServer(Path(tmp) / "redis") as redis_server:
        serve = Serve(Path(tmp), redis_server.url)
        serve.start()
        try:
            token = httpx.post(serve.url + "/token", data={"username": "soak", "password": "soak"},
                               timeout=10).json()["access_token"]
            with CuttingProxy([serve.port], drop_replies=args.drop_acks, seed=args.seed) as proxy, \
                    proxy.chaos(tuple(args.cut_every)):
                ids, frames = push(proxy.url, token, args, serve, report)
            with redis_server.client() as r:
                stored = [(entry_id.decode(), fields[b"d"]) for entry_id, fields in r.xrange(SID)]
        finally:
            serve.stop()
    numbers = [int(data.split(b" ", 2)[1]) for _, data in stored]
    summary = report["summary"]
    print(f"pushed {len(frames)} frames of {args.size} bytes at {args.hz:g} Hz for {args.duration:g} s; "
          f"the proxy cut {proxy.cuts} connections and lost {proxy.dropped} chunks the server sent; "
          f"the server was away {report.get('downtime', float('nan')):.2f} s for its restart")
    print(f"pusher: {summary}")
    print(f"stored {len(stored)}; duplicated {len(numbers) - len(set(numbers))}, "
          f"missing {len(set(range(len(frames))) - set(numbers))}, "
          f"out of order {sum(1 for a, b in zip(numbers, numbers[1:]) if b <= a)}, "
          f"returned ids equal the stored ones: {ids == [i for i, _ in stored]}")
    exact = stored == list(zip(ids, frames))
    print("every frame stored exactly once, in order, byte-exact" if exact else "!!! NOT EXACTLY ONCE !!!")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
