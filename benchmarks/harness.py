"""The processes a benchmark run owns: a private redis-server and ptgstore servers, plus
their CPU time and memory read from /proc."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from ptgstore.testing import RedisServer, free_port, wait_until

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def wait_for(predicate, timeout: float, what: str):
    """Poll `predicate` until truthy; fail after `timeout` seconds."""
    return wait_until(predicate, timeout=timeout, interval=0.05, what=what)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of live processes, every thread's: in nanoseconds from each thread's
    /proc/<pid>/task/<tid>/schedstat (a run of 3 s at 30 Hz costs Redis a few clock ticks, the
    resolution of /proc/<pid>/stat, which is read where schedstat is not there)."""
    total = 0.0
    for pid in pids:
        try:
            threads = [int((task / "schedstat").read_text().split()[0])
                       for task in Path(f"/proc/{pid}/task").iterdir()]
            total += sum(threads) / 1e9
            continue
        except (OSError, ValueError, IndexError):
            pass
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return total


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def PrivateRedis(directory: Path, unix: bool = False) -> RedisServer:  # (`with PrivateRedis(dir) as redis`)
    """A redis-server on a free loopback port with no persistence (the same for both sides); with
    `unix`, also on a unix socket in `directory`, which `server_url` then names (as the Redis that
    `ptgstore serve` embeds is reached)."""
    socket_path = Path(directory) / "redis.sock"
    server = RedisServer(directory, extra_args=("--maxclients", "4000") + (
        ("--unixsocket", str(socket_path), "--unixsocketperm", "700") if unix else ()))
    server.server_url = f"unix://{socket_path}" if unix else server.url  # type: ignore[attr-defined]
    return server


class Server:
    """`python -m ptgstore serve` in a process of its own, on a free loopback port."""

    def __init__(self, redis_url: str, workers: int = 1, max_len: int = 100_000, pythonpath: str | None = None,
                 env: dict[str, str] | None = None):
        self.redis_url = redis_url
        self.redis_port = urlsplit(redis_url).port
        self.workers = workers
        self.max_len = max_len
        self.pythonpath = pythonpath  # the checkout whose ptgstore this is (the installed one by default)
        self.env = env or {}  # more PTGSTORE_* settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.token = ""
        self._data = tempfile.TemporaryDirectory(prefix="ptgstore-bench-")

    def __enter__(self) -> "Server":
        env = dict(os.environ, PTGSTORE_REDIS_URL=self.redis_url, PTGSTORE_MAX_LEN=str(self.max_len),
                   PTGSTORE_DATA_DIR=self._data.name, PTGSTORE_LOG_LEVEL="warning", PTGSTORE_AUTH="dev", **self.env)
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [self.pythonpath, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ptgstore", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.workers)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            wait_for(self._ready, 30, f"ptgstore on port {self.port}")
            self.token = httpx.post(f"{self.url}/token", data={"username": "bench", "password": "bench"},
                                    timeout=10).json()["access_token"]
        except BaseException:
            self.__exit__()
            raise
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"ptgstore exited at start: {self.process.stderr.read().decode()[-2000:]}")
        try:
            alive = httpx.get(f"{self.url}/ping", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
        # with several workers, wait until every one is serving
        return alive and len(process_tree(self.process.pid)) >= (1 if self.workers == 1 else self.workers + 1)

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def rss(self) -> int:
        return rss_bytes(self.pids())

    def __exit__(self, *exc_info) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process and self.process.stderr:
            self.process.stderr.close()
        self._data.cleanup()
