"""No stream id names ptgstore's own keys; the recorder's event stream is the server's; start-up
survives own keys of the wrong type (issue 20, item 3)."""
import contextlib
import logging
import urllib.parse

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from support.servers import live_server, make_settings
from support.ws import expect_close, ws_connect

OWN = ["ptgstore:secret-fingerprint", "ptgstore:recording", "ptgstore:recording:cursors", "ptgstore:recorder:lease",
       "ptgstore:meta", "ptgstore:deleted", "ptgstore:anything", "recording:id"]


def quoted(sid: str) -> str:
    return urllib.parse.quote(sid, safe="")


def assert_nothing_written(rdb) -> None:
    """No stream, no stream's metadata or epoch, and the server's own keys of their own types."""
    assert list(rdb.scan_iter(_type="stream")) == []
    assert [k for k in rdb.keys("*") if b"+" in k and not k.startswith(b"ptgstore+producer:")] == []
    assert rdb.type("ptgstore:secret-fingerprint") == b"string"
    assert rdb.type("ptgstore:recording") in (b"none", b"hash") and rdb.type("recording:id") in (b"none", b"string")


def push_close(server, path: str, *messages, **query) -> int:
    """The close code a push socket ends with after `messages` (sent while it stays open)."""
    with ws_connect(server, path, **query) as ws:
        with contextlib.suppress(ConnectionClosed):
            for message in messages:
                ws.send(message)
        return expect_close(ws)[0]


@pytest.mark.parametrize("sid", OWN)
def test_no_stream_id_names_the_servers_keys(server, rdb, sid):
    http = server.http()
    assert http.post(f"/data/{quoted(sid)}", files=[("entries", ("e", b"x"))]).status_code == 400
    assert http.post("/data/*", files=[("entries", (sid, b"x"))]).status_code == 400
    assert http.put(f"/streams/{quoted(sid)}", json={}).status_code == 400
    refused = http.delete(f"/streams/{quoted(sid)}")
    assert refused.status_code == 400 and "reserved" in refused.json()["detail"]
    assert http.get(f"/streams/{quoted(sid)}").status_code == 400
    assert http.get(f"/data/{quoted(sid)}").status_code == 400
    assert push_close(server, f"/data/{quoted(sid)}/push", b"entry") == 1007
    assert push_close(server, "/data/*/push", f'[["{sid}", 0]]', b"entry", batch="true") == 1007
    assert_nothing_written(rdb)


def test_a_delete_cannot_empty_an_active_recording(server, rdb):
    http = server.http()
    http.post("/data/cam", files=[("entries", ("e", b"x"))])
    assert http.put("/recordings/start", params={"rec_id": "kept"}).json() == "kept"
    try:
        for path in ("ptgstore:recording+recording:id", "cam+ptgstore:recording", "recording:id"):
            assert http.delete(f"/streams/{path}").status_code == 400
        assert http.get("/recordings/current").json() == "kept"
        assert rdb.exists("ptgstore:recording", "recording:id") == 2
    finally:
        assert http.put("/recordings/stop").json() == 1


def test_the_recorders_event_stream_is_read_only_and_unlisted(server, rdb):
    http = server.http()
    http.post("/data/cam", files=[("entries", ("e", b"x"))])
    http.put("/recordings/start", params={"rec_id": "r1"})
    assert http.put("/recordings/stop").json() == 1
    sid = "event:recording:id"
    assert rdb.xlen(sid) == 2  # announced at start and stop, as the original server did
    assert http.get("/streams").json() == ["cam"]
    assert [s["sid"] for s in http.get("/status/streams").json()["streams"]] == ["cam"]
    assert http.get(f"/streams/{sid}").json()["length"] == 2  # readable by name (the original's clients follow it)
    with ws_connect(server, f"/data/{sid}/pull", last_entry_id="0") as ws:
        ws.recv(timeout=10)
        assert ws.recv(timeout=10).startswith(b"r1")
    for reply in (http.post(f"/data/{sid}", files=[("entries", ("e", b"forged"))]), http.delete(f"/streams/{sid}"),
                  http.delete(f"/streams/cam+{sid}"), http.put(f"/streams/{sid}", json={"max_len": 1})):
        assert reply.status_code == 400 and "written by the server only" in reply.json()["detail"]
    assert push_close(server, f"/data/{sid}/push", b"forged") == 1007
    assert rdb.xlen(sid) == 2 and rdb.exists("cam")


def test_start_up_survives_own_keys_of_the_wrong_type(tmp_path, rdb, redis_server, ptgstore_logs):
    caplog = ptgstore_logs
    # what a client of an earlier version could leave behind (stream ids named the keys then)
    rdb.xadd("ptgstore:secret-fingerprint", {"d": b"x"})
    rdb.xadd("ptgstore:recording", {"d": b"x"})
    rdb.set("ptgstore:recording:cursors", "x")
    rdb.xadd("ptgstore:recording:writers", {"d": b"x"})
    rdb.set("ptgstore:recordings:directory", "x")
    rdb.hset("event:recording:id", "d", "x")
    rdb.xadd("cam", {"d": b"frame"})
    with caplog.at_level(logging.ERROR, logger="ptgstore.ownkeys"):
        with live_server(make_settings(tmp_path, redis_server.url)) as live:
            http = live.http()
            assert httpx.get(live.url + "/ping").json() is True
            assert http.get("/recordings/current").json() is None
            assert http.put("/recordings/start", params={"rec_id": "after"}).json() == "after"
            assert http.put("/recordings/stop").json() == 1
            assert http.get("/streams").json() == ["cam"]
    assert rdb.type("ptgstore:secret-fingerprint") == b"string"
    assert rdb.xlen("cam") == 1  # streams are never touched
    removed = " ".join(record.getMessage() for record in caplog.records)
    for key in ("ptgstore:secret-fingerprint", "ptgstore:recording", "ptgstore:recording:cursors",
                "ptgstore:recording:writers", "ptgstore:recordings:directory"):
        assert f"'{key}'" in removed


@pytest.mark.cluster
def test_on_a_cluster_the_tagged_own_keys_are_out_of_reach_and_repaired(tmp_path, cluster):
    state = "{ptgstore:recording}ptgstore:recording"  # the recorder's state, in its hash-tagged slot
    cluster.owner(state).client.xadd(state, {"d": b"x"})
    # a separator under which a stream id's group would be the recorder's tag
    settings = make_settings(tmp_path, cluster.url, redis_cluster=True, group_separator=":c")
    with live_server(settings) as live:
        http = live.http()
        assert http.get("/recordings/current").json() is None
        assert cluster.owner(state).client.type(state) == b"none"
        for sid in ("ptgstore:recording:cursors", "ptgstore:recording", "recording:id"):
            assert http.post(f"/data/{quoted(sid)}", files=[("entries", ("e", b"x"))]).status_code == 400
            assert http.delete(f"/streams/{quoted(sid)}").status_code == 400
        assert http.put("/recordings/start", params={"rec_id": "c1"}).json() == "c1"
        assert http.put("/recordings/stop").json() == 1
        assert http.get("/streams").json() == []


def test_a_foxglove_client_cannot_publish_to_the_servers_keys_or_streams(server, rdb):
    from test_foxglove import fox_connect, next_op

    with fox_connect(server) as ws:
        next_op(ws, "advertise")
        for topic in ("ptgstore:recording", "recording:id", "event:recording:id"):
            ws.send(orjson.dumps({"op": "advertise", "channels": [{"id": 1, "topic": topic, "encoding": "json"}]})
                    .decode())
            status = next_op(ws, "status")
            assert status["level"] == 2 and ("reserved" in status["message"] or "server only" in status["message"])
    assert_nothing_written(rdb)
