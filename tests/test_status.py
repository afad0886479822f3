"""`/status/streams` and `/status`: the small JSON answers the dashboard polls (token needed)."""
from __future__ import annotations

import time

import httpx
import pytest

from ptgstore.testing import wait_until
from support.ws import push, ws_connect


def fresh(http, path, after_ms):
    """An answer whose snapshot was taken after `after_ms` (answers are shared for up to a second)."""
    return wait_until(lambda: (r := http.get(path).json())["now"] > after_ms and r, timeout=10,
                      what=f"a snapshot of {path} newer than {after_ms}")


@pytest.mark.usefixtures("redis_7")
@pytest.mark.slow
def test_stream_summaries_without_entry_bytes(server, http):
    push(server, "cam", b"a" * 10, b"b" * 20, b"c" * 3000)
    http.put("/streams/cam", json={"max_len": 50, "sensor": "rgb"}).raise_for_status()
    http.put("/streams/planned", json={"note": "no data yet"}).raise_for_status()
    stamp = int(time.time() * 1000)
    reply = fresh(http, "/status/streams", stamp)
    assert abs(reply["now"] - time.time() * 1000) < 5000
    rows = {row["sid"]: row for row in reply["streams"]}
    assert list(rows) == ["cam", "planned"]
    cam = rows["cam"]
    assert cam["length"] == 3 and cam["entries-added"] == 3
    assert cam["last-entry-size"] == 3000
    assert cam["last-entry-type"] is None
    assert cam["max_len"] == 50 and cam["meta"] == {"max_len": 50, "sensor": "rgb"}
    info = http.get("/streams/cam").json()
    assert cam["first-entry"] == info["first-entry"] and cam["last-entry"] == info["last-entry"]
    assert cam["last-generated-id"] == info["last-entry"]
    planned = rows["planned"]
    assert planned["length"] == 0 and planned["last-entry"] is None and planned["max_len"] == 1000


def test_image_type_of_the_newest_entry(server, http):
    push(server, "jpeg", b"\xff\xd8\xff\xe0 rest of a jpeg")
    push(server, "png", b"\x89PNG\r\n\x1a\n rest of a png")
    push(server, "almost", b"\xff\xd8 too short a signature")
    rows = {row["sid"]: row for row in fresh(http, "/status/streams", int(time.time() * 1000))["streams"]}
    assert {sid: row["last-entry-type"] for sid, row in rows.items()} == {
        "almost": None, "jpeg": "image/jpeg", "png": "image/png"}


@pytest.mark.usefixtures("redis_7")
def test_entries_added_counts_past_trimming(server, http):
    http.put("/streams/imu", json={"max_len": 1}).raise_for_status()
    push(server, "imu", *[b"%d" % i for i in range(300)])
    row = fresh(http, "/status/streams", int(time.time() * 1000))["streams"][0]
    assert row["entries-added"] == 300
    assert row["length"] < 300  # trimmed, while the count of entries added goes on


def test_many_streams_in_one_answer(server, http, rdb):
    pipe = rdb.pipeline(transaction=False)
    for i in range(250):  # more than one script call's chunk
        pipe.xadd(f"s/{i:03d}", {"d": b"x" * i})
    pipe.execute()
    rows = fresh(http, "/status/streams", int(time.time() * 1000))["streams"]
    assert [row["sid"] for row in rows] == [f"s/{i:03d}" for i in range(250)]
    assert [row["last-entry-size"] for row in rows] == list(range(250))


@pytest.mark.slow
def test_a_deleted_stream_leaves_the_next_snapshot(server, http):
    push(server, "gone", b"x")
    assert fresh(http, "/status/streams", int(time.time() * 1000))["streams"][0]["sid"] == "gone"
    http.delete("/streams/gone").raise_for_status()
    assert fresh(http, "/status/streams", int(time.time() * 1000))["streams"] == []


@pytest.mark.slow
def test_server_status_counts_sockets_and_entries(server, http):
    before = http.get("/status").json()
    assert before["redis"]["reachable"] is True
    assert before["redis"]["redis_version"]
    assert before["redis"]["address"] == server.settings.redis_url.split("//")[1]
    with ws_connect(server, "/data/imu/push", ack="true") as ws:
        for i in range(5):
            ws.send(b"12345")
            ws.recv(timeout=10)
        during = fresh(http, "/status", int(time.time() * 1000))
        assert during["open_sockets"]["push"] == 1
        assert during["entries_in"] - before["entries_in"] == 5
        assert during["bytes_in"] - before["bytes_in"] == 25
    after = fresh(http, "/status", int(time.time() * 1000))
    assert after["open_sockets"]["push"] == 0


def test_status_needs_a_token(server):
    for path in ("/status", "/status/streams"):
        reply = httpx.get(server.url + path, timeout=10)
        assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"


def test_openapi_describes_the_browser_routes(server):
    paths = httpx.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    for path in ("/mjpeg/{sid}", "/status", "/status/streams"):
        assert "get" in paths[path], path
