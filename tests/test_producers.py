"""Idempotent pushes on the wire: a push socket naming its producer (`producer=`, `seq=`) gets, for a
batch it already stored, the ids it was stored under, and nothing is stored twice."""
from __future__ import annotations

import orjson
import pytest
from redis.crc import key_slot

from ptgstore.producers import OUTSIDE_LUA
from ptgstore.testing import wait_until
from support.servers import live_server, make_settings
from support.ws import expect_close, ws_connect


def stored(rdb, sid):
    return [(i.decode(), f[b"d"]) for i, f in rdb.xrange(sid)]


def send_batch(ws, items, blob):
    ws.send(orjson.dumps(items).decode())
    ws.send(blob)
    return ws.recv(timeout=10).split(",")


def test_a_resent_batch_is_answered_with_its_ids_and_stored_once(server, rdb):
    query = dict(ack="true", producer="cam-1", seq="7")
    with ws_connect(server, "/data/*/push", **query) as ws:
        first = send_batch(ws, [["left", 0], ["right", 1]], b"LR")  # seq 7
        second = send_batch(ws, [["left", 0]], b"L2")  # seq 8
    # the ack of seq 8 was "lost": a new socket resends from 8, then goes on
    with ws_connect(server, "/data/*/push", **{**query, "seq": "8"}) as ws:
        assert send_batch(ws, [["left", 0]], b"L2") == second
        third = send_batch(ws, [["right", 0]], b"R3")  # seq 9
    # and seq 7 again, resent long after: still the same ids
    with ws_connect(server, "/data/*/push", **query) as ws:
        assert send_batch(ws, [["left", 0], ["right", 1]], b"LR") == first
    assert stored(rdb, "left") == [(first[0], b"L"), (second[0], b"L2")]
    assert stored(rdb, "right") == [(first[1], b"R"), (third[0], b"R3")]


def test_unbatched_entries_are_numbered_one_by_one(server, rdb):
    with ws_connect(server, "/data/cam/push", ack="true", producer="p", seq="0") as ws:
        ids = []
        for payload in (b"a", b"b", b"c"):
            ws.send(payload)
            ids.append(ws.recv(timeout=10))
    with ws_connect(server, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
        for payload, entry_id in zip((b"b", b"c"), ids[1:]):
            ws.send(payload)
            assert ws.recv(timeout=10) == entry_id
        ws.send(b"d")  # seq 3: new
        ids.append(ws.recv(timeout=10))
    assert stored(rdb, "cam") == list(zip(ids, [b"a", b"b", b"c", b"d"]))


def test_a_resend_through_another_process_is_answered_alike(tmp_path, rdb, redis_server, server):
    with ws_connect(server, "/data/cam/push", ack="true", batch="true", producer="p", seq="1") as ws:
        ids = send_batch(ws, [0, 1], b"xy")
    with live_server(make_settings(tmp_path / "other", redis_server.url)) as other:
        with ws_connect(other, "/data/cam/push", ack="true", batch="true", producer="p", seq="1") as ws:
            assert send_batch(ws, [0, 1], b"xy") == ids
    assert stored(rdb, "cam") == list(zip(ids, [b"x", b"y"]))


def test_a_sequence_older_than_the_server_remembers_is_refused(tmp_path, rdb, redis_server):
    with live_server(make_settings(tmp_path, redis_server.url, producer_batches=3)) as live:
        with ws_connect(live, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
            for i in range(5):  # seq 1..5; 3, 4 and 5 remembered
                ws.send(b"%d" % i)
                ws.recv(timeout=10)
        with ws_connect(live, "/data/cam/push", ack="true", producer="p", seq="2") as ws:
            ws.send(b"1")
            code, reason = expect_close(ws)
        assert code == 1008
        assert "seq 2 is older than those remembered (3..5)" in reason
        with ws_connect(live, "/data/cam/push", ack="true", producer="p", seq="3") as ws:
            ws.send(b"2")
            assert ws.recv(timeout=10) == rdb.xrange("cam")[2][0].decode()  # remembered: answered
        assert rdb.xlen("cam") == 5


def test_a_number_skipped_below_the_newest_is_refused(server, rdb):
    """Numbers may leave gaps; a message later numbered into one was never stored: refused all the same."""
    for seq in ("1", "3"):
        with ws_connect(server, "/data/cam/push", ack="true", producer="p", seq=seq) as ws:
            ws.send(b"x" + seq.encode())
            ws.recv(timeout=10)
    with ws_connect(server, "/data/cam/push", ack="true", producer="p", seq="2") as ws:
        ws.send(b"x2")
        assert expect_close(ws) == (1008, "producer p seq 2 is not among those remembered (1..3); it may be stored")
    assert [d for _, d in stored(rdb, "cam")] == [b"x1", b"x3"]


def test_a_resend_with_another_number_of_entries_is_refused(server, rdb):
    with ws_connect(server, "/data/cam/push", ack="true", batch="true", producer="p", seq="1") as ws:
        send_batch(ws, [0, 1], b"xy")
    with ws_connect(server, "/data/cam/push", ack="true", batch="true", producer="p", seq="1") as ws:
        ws.send("[0]")
        ws.send(b"x")
        code, reason = expect_close(ws)
    assert (code, reason) == (1008, "producer p batch 1 was stored with 2 entries, not 1")
    assert rdb.xlen("cam") == 2


@pytest.mark.slow
def test_the_record_is_forgotten_after_the_window(tmp_path, rdb, redis_server):
    with live_server(make_settings(tmp_path, redis_server.url, producer_window=1)) as live:
        with ws_connect(live, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
            ws.send(b"x")
            ws.recv(timeout=10)
        (record,) = rdb.keys("*producer*")
        assert record == b"ptgstore+producer:p/test"
        assert 0 < rdb.pttl(record) <= 1000
        wait_until(lambda: not rdb.exists(record), timeout=10, what="the record to expire")
        with ws_connect(live, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
            ws.send(b"x")
            ws.recv(timeout=10)  # forgotten: a new producer, whose batch is stored
    assert rdb.xlen("cam") == 2


def test_empty_batches_and_refused_batches_consume_numbers_without_a_record(server, rdb):
    with ws_connect(server, "/data/cam/push", ack="true", batch="true", producer="p", seq="1") as ws:
        ws.send("[]")
        ws.send(b"")
        assert ws.recv(timeout=10) == ""
        ids = send_batch(ws, [0], b"a")  # seq 2
    assert not rdb.zrangebyscore("ptgstore+producer:p/test", 1, 1)
    assert len(rdb.zrangebyscore("ptgstore+producer:p/test", 2, 2)) == 1
    # a stale timestamp stores nothing and records nothing
    with ws_connect(server, "/data/cam/push", ack="true", batch="true", producer="p", seq="3") as ws:
        ws.send(orjson.dumps([["cam", 1.0, 0]]).decode())
        ws.send(b"old")
        assert expect_close(ws)[0] == 1007
    assert rdb.zcard("ptgstore+producer:p/test") == 1
    assert stored(rdb, "cam") == [(ids[0], b"a")]


def test_single_entries_of_a_producer_keep_the_streams_rules(server, rdb, http):
    """A producer's one-entry message (its own script) trims to max_len and refuses a key of another type."""
    assert http.put("/streams/cam", json={"max_len": 5}).status_code == 200
    with ws_connect(server, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
        for i in range(300):
            ws.send(b"%d" % i)
            ws.recv(timeout=10)
    assert 5 <= rdb.xlen("cam") < 300
    rdb.set("text", "not a stream")
    with ws_connect(server, "/data/text/push", ack="true", producer="p", seq="301") as ws:
        ws.send(b"x")
        assert expect_close(ws) == (1007, "text is not a stream")
    assert rdb.zcard("ptgstore+producer:p/test") == 64  # the newest numbers; nothing recorded for the refusal


@pytest.mark.parametrize("query, code", [
    ({"producer": "p"}, 1008),  # no seq
    ({"seq": "1"}, 1008),  # no producer
    ({"producer": "p", "seq": "1", "ack": "false"}, 1008),  # nobody would hear the ids
    ({"producer": "a/b", "seq": "1"}, 1007),
    ({"producer": "", "seq": "1"}, 1008),  # an empty option is not given (as on every route): seq alone
    ({"producer": "x" * 129, "seq": "1"}, 1007),
    ({"producer": "p", "seq": "-1"}, 1007),
    ({"producer": "p", "seq": "١"}, 1007),  # not an ASCII digit
    ({"producer": "p", "seq": str(2**53)}, 1007),
])
def test_producer_options_are_checked(server, rdb, query, code):
    with ws_connect(server, "/data/cam/push", **{"ack": "true", **query}) as ws:
        closed = expect_close(ws)
    assert closed[0] == code
    assert rdb.xlen("cam") == 0


@pytest.mark.parametrize("pad", [0, OUTSIDE_LUA], ids=["small", "large"])
def test_another_account_cannot_touch_a_producers_record(server, rdb, pad):
    """A hostile token holder who learns a producer id gets a record of their own: their batch is
    stored (not answered with the victim's ids), and the victim's resends still find their own; frames
    large enough for their own XADD (`large`) alike."""
    def p(data: bytes) -> bytes:
        return data.ljust(pad, b".")

    with ws_connect(server, "/data/cam/push", ack="true", producer="headset", seq="1") as ws:
        ws.send(p(b"victim"))
        victim = ws.recv(timeout=10)
    with ws_connect(server, "/data/cam/push", ack="true", producer="headset", seq="1",
                    token=server.token("mallory")) as ws:
        ws.send(p(b"mallory"))
        assert ws.recv(timeout=10) != victim
        ws.send(p(b"mallory again"))  # seq 2, pushed ahead of the victim: their seq 2 is theirs still
        ws.recv(timeout=10)
    with ws_connect(server, "/data/cam/push", ack="true", producer="headset", seq="1") as ws:
        ws.send(p(b"victim"))
        assert ws.recv(timeout=10) == victim
        ws.send(p(b"victim 2"))
        ws.recv(timeout=10)
    assert [d for _, d in stored(rdb, "cam")] == [p(b"victim"), p(b"mallory"), p(b"mallory again"), p(b"victim 2")]


@pytest.mark.cluster
def test_the_record_lives_in_the_batchs_slot_on_a_cluster(tmp_path, cluster):
    groups = [cluster.group_on(i) for i in range(len(cluster.masters))]
    with live_server(make_settings(tmp_path, cluster.url, redis_cluster=True)) as live:
        store = live.app.state.store
        for g in groups:
            sid = f"{g}:cam"
            with ws_connect(live, "/data/*/push", ack="true", producer="p", seq="1") as ws:
                ids = send_batch(ws, [[sid, 0], [f"{g}:depth", 1]], b"cd")
            with ws_connect(live, "/data/*/push", ack="true", producer="p", seq="1") as ws:
                assert send_batch(ws, [[sid, 0], [f"{g}:depth", 1]], b"cd") == ids
            with ws_connect(live, f"/data/{sid}/push", ack="true", producer="p", seq="2") as ws:
                ws.send(frame(2))  # (its own XADD, in the record's slot too)
                large = ws.recv(timeout=10)
            with ws_connect(live, f"/data/{sid}/push", ack="true", producer="p", seq="2") as ws:
                ws.send(frame(2))
                assert ws.recv(timeout=10) == large
            record = store.keys.producer("p", "test", sid)
            assert key_slot(record.encode()) == key_slot(store.key(sid).encode())
            node = cluster.owner(record).client
            assert node.zcard(record) == 2 and node.xlen(store.key(sid)) == 2
        # a batch across groups is refused as before, with or without a producer
        with ws_connect(live, "/data/*/push", ack="true", producer="p", seq="5") as ws:
            ws.send(orjson.dumps([[f"{groups[0]}:cam", 0], [f"{groups[1]}:cam", 1]]).decode())
            ws.send(b"ab")
            code, reason = expect_close(ws)
        assert code == 1007 and "one group" in reason


def test_a_foreign_page_cannot_open_a_producer_socket_with_the_cookie(server, rdb):
    """Cookie-only push sockets from another origin are refused at the handshake, producer or not."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        connect(f"{server.ws_url}/data/cam/push?ack=true&producer=p&seq=1", open_timeout=10,
                additional_headers={"Origin": "http://evil.example", "Cookie": f"authorization={server.token()}"})
    assert refused.value.response.status_code == 403
    assert rdb.keys("*producer*") == [] and rdb.xlen("cam") == 0


def frame(i: int) -> bytes:
    """A frame large enough to be stored by its own XADD (producers.OUTSIDE_LUA), unlike any other."""
    return b"%08d" % i + bytes(range(256)) * (OUTSIDE_LUA // 256)


def counters(rdb, key):
    """What pulls tell trimmed entries by (Redis 7): entries ever added, and those there."""
    info = rdb.xinfo_stream(key)
    return info["entries-added"], info["length"]


def test_large_frames_are_stored_once_and_a_resend_leaves_no_trace(server, rdb):
    """A large frame's XADD runs outside Lua and is taken back for a resend: the stream's count of
    entries ever added (from which pulls tell trimmed entries) stays as it was."""
    with ws_connect(server, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
        ids = []
        for i in range(3):
            ws.send(frame(i))
            ids.append(ws.recv(timeout=10))
    before = counters(rdb, "cam")
    rdb.script_flush()  # (a restarted Redis forgets its scripts: the frame's script is sent whole)
    with ws_connect(server, "/data/cam/push", ack="true", producer="p", seq="2") as ws:
        for i in (1, 2):
            ws.send(frame(i))
            assert ws.recv(timeout=10) == ids[i]
        assert counters(rdb, "cam") == before == (3, 3)
        ws.send(frame(3))  # seq 4: new
        ids.append(ws.recv(timeout=10))
    assert stored(rdb, "cam") == [(entry_id, frame(i)) for i, entry_id in enumerate(ids)]
    assert counters(rdb, "cam") == (4, 4)
    assert rdb.xinfo_groups("cam") == []  # the group read for the XADD's id is gone
    with ws_connect(server, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
        ws.send(frame(9))  # seq 1 again, other bytes: a resend is known by its number
        assert ws.recv(timeout=10) == ids[0]
        ws.send(frame(9))  # seq 2, the same
        ws.recv(timeout=10)
    assert len(stored(rdb, "cam")) == 4


def test_a_large_frame_refused_stores_nothing(tmp_path, rdb, redis_server):
    with live_server(make_settings(tmp_path, redis_server.url, producer_batches=2)) as live:
        with ws_connect(live, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
            for i in range(3):  # seq 1..3; 2 and 3 remembered
                ws.send(frame(i))
                ws.recv(timeout=10)
        before = counters(rdb, "cam")
        with ws_connect(live, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
            ws.send(frame(0))
            assert expect_close(ws) == (1008, "producer p seq 1 is older than those remembered (2..3); it may be stored")
        assert rdb.xlen("cam") == 3 and counters(rdb, "cam") == before
        rdb.set("text", "not a stream")
        with ws_connect(live, "/data/text/push", ack="true", producer="p", seq="4") as ws:
            ws.send(frame(4))
            assert expect_close(ws) == (1007, "text is not a stream")
        assert rdb.get("text") == b"not a stream"
        assert rdb.zrange("ptgstore+producer:p/test", 0, -1, withscores=True)[-1][1] == 3  # 4 not recorded


def test_a_large_frame_resent_under_the_number_of_a_batch_is_refused(server, rdb):
    with ws_connect(server, "/data/cam/push", ack="true", batch="true", producer="p", seq="1") as ws:
        send_batch(ws, [0, 1], b"xy")
    with ws_connect(server, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
        ws.send(frame(0))
        assert expect_close(ws) == (1008, "producer p batch 1 was stored with 2 entries, not 1")
    assert [d for _, d in stored(rdb, "cam")] == [b"x", b"y"] and counters(rdb, "cam") == (2, 2)


def test_a_large_frame_resent_to_a_deleted_stream_does_not_bring_it_back(server, rdb, http):
    with ws_connect(server, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
        ws.send(frame(0))
        first = ws.recv(timeout=10)
    assert http.delete("/streams/cam").status_code in (200, 204)
    with ws_connect(server, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
        ws.send(frame(0))
        assert ws.recv(timeout=10) == first  # stored before: answered, nothing stored
    assert rdb.exists("cam") == 0


def test_large_frames_resent_on_redis_6_2(tmp_path, redis_6_2):
    """Redis 6.2 keeps no count of entries added: the frame's XADD is taken back all the same, and a
    stream it made is gone again."""
    rdb = redis_6_2.client()
    rdb.flushall()
    with live_server(make_settings(tmp_path, redis_6_2.url)) as live:
        with ws_connect(live, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
            ws.send(frame(0))
            first = ws.recv(timeout=10)
        with ws_connect(live, "/data/cam/push", ack="true", producer="p", seq="1") as ws:
            ws.send(frame(0))
            assert ws.recv(timeout=10) == first
        assert stored(rdb, "cam") == [(first, frame(0))]
        with ws_connect(live, "/data/other/push", ack="true", producer="p", seq="1") as ws:
            ws.send(frame(0))  # seq 1 of p is stored (in cam): answered, and `other` not made
            assert ws.recv(timeout=10) == first
        assert rdb.exists("other") == 0
    rdb.close()
