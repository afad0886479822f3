"""`gaps=true`: a notice whenever the next entry a pull would deliver is no longer in Redis, on every
path and for as long as the socket is open; never for entries that simply never existed."""
import json

import orjson
import pytest

from ptgstore.testing import wait_until
from support.ws import id_pair, read_delivery, ws_connect


def push(rdb, sid, *payloads, **kwargs):
    return [rdb.xadd(sid, {"d": p}, **kwargs).decode() for p in payloads]


def following(server, *sids):
    followers = server.app.state.hub.followers
    wait_until(lambda: all(sid in followers and followers[sid].ready.is_set() for sid in sids),
               what=f"followers of {sids}")


def read_message(ws):
    """A gap notice (as a dict) or a delivery (as a list of entries)."""
    first = ws.recv(timeout=10)
    if isinstance(first, str) and first.startswith("{"):
        return orjson.loads(first)
    items = orjson.loads(first)
    blob = ws.recv(timeout=10)
    ends = [item[2] for item in items[1:]] + [len(blob)]
    return [(sid, entry_id, blob[start:end]) for (sid, entry_id, start), end in zip(items, ends)]


def push_batch(server, sid, payloads):
    offsets, at = [], 0
    for p in payloads:
        offsets.append(at)
        at += len(p)
    with ws_connect(server, f"/data/{sid}/push", batch="true", ack="true") as ws:
        ws.send(json.dumps(offsets))
        ws.send(b"".join(payloads))
        return ws.recv(timeout=10).split(",")


@pytest.mark.parametrize("path", ["cam", "cam+imu"])
@pytest.mark.usefixtures("redis_7")
def test_a_batch_larger_than_max_len_while_the_socket_is_open(server, rdb, path):
    """The single-stream shared path and the several-stream path alike."""
    with server.http() as http:
        assert http.put("/streams/cam", json={"max_len": 5}).status_code == 200
    sids = path.split("+")
    with ws_connect(server, f"/data/{path}/pull", count="1000", gaps="true") as ws:
        following(server, *sids)
        first = push(rdb, "cam", b"first")
        assert read_message(ws) == [("cam", first[0], b"first")]
        ids = push_batch(server, "cam", [b"%d" % i for i in range(300)])
        kept = [i.decode() for i, _ in rdb.xrange("cam")]
        assert len(kept) < 300 and kept == ids[-len(kept):]  # trimmed by the push itself
        assert read_message(ws) == {"gap": {"sid": "cam", "after": first[0], "oldest": kept[0]}}
        got = []
        while len(got) < len(kept):
            got += read_message(ws)
        assert [e[1] for e in got] == kept
        # and the next batch too: every gap, not only the first
        more = push_batch(server, "cam", [b"m%d" % i for i in range(300)])
        kept = [i.decode() for i, _ in rdb.xrange("cam")]
        assert kept == more[-len(kept):]
        assert read_message(ws) == {"gap": {"sid": "cam", "after": got[-1][1], "oldest": kept[0]}}
        got = []
        while len(got) < len(kept):
            got += read_message(ws)
        assert [e[1] for e in got] == kept


@pytest.mark.usefixtures("redis_7")
def test_slow_ack_consumer_is_told_of_entries_trimmed_from_under_it(server, rdb):
    with ws_connect(server, "/data/cam/pull", count="2", ack="true", gaps="true") as ws:
        following(server, "cam")
        with rdb.pipeline(transaction=True) as pipe:  # one wake: all ten in memory
            for i in range(10):
                pipe.xadd("cam", {"d": b"%d" % i})
            ids = [i.decode() for i in pipe.execute()]
        assert [e[1] for e in read_message(ws)] == ids[:2]
        # trimmed while the consumer is slow: only the newest 5 (and the new one) are kept
        new = push(rdb, "cam", b"new", maxlen=5, approximate=False)
        follower = server.app.state.hub.followers["cam"]
        wait_until(lambda: follower.newest == id_pair(new[0]), what="the follower to see the trim")
        ws.send("next")
        assert read_message(ws) == {"gap": {"sid": "cam", "after": ids[1], "oldest": ids[6]}}
        assert [e[1] for e in read_message(ws)] == ids[6:8]
        ws.send("next")
        assert [e[1] for e in read_message(ws)] == ids[8:10]
        ws.send("next")
        assert [e[1] for e in read_message(ws)] == new


@pytest.mark.usefixtures("redis_7")
def test_a_time_before_the_first_entry_of_an_untrimmed_stream_is_no_gap(server, rdb):
    ids = push(rdb, "cam", b"a", b"b", id="5000-*") + push(rdb, "cam", b"c", id="6000-*")
    with ws_connect(server, "/data/cam/pull", last_entry_id="1000", count="10", gaps="true") as ws:
        assert [e[1] for e in read_message(ws)] == ids
    # once trimmed, the same cursor is a gap
    rdb.xtrim("cam", minid=ids[2], approximate=False)
    with ws_connect(server, "/data/cam/pull", last_entry_id="1000", count="10", gaps="true") as ws:
        assert read_message(ws) == {"gap": {"sid": "cam", "after": "1000-0", "oldest": ids[2]}}
        assert [e[1] for e in read_message(ws)] == ids[2:]


def test_without_gaps_no_notice_is_sent(server, rdb):
    with server.http() as http:
        assert http.put("/streams/cam", json={"max_len": 5}).status_code == 200
    with ws_connect(server, "/data/cam/pull", count="1000") as ws:
        following(server, "cam")
        first = push(rdb, "cam", b"first")
        assert read_delivery(ws) == [("cam", first[0], b"first")]
        push_batch(server, "cam", [b"%d" % i for i in range(300)])
        kept = [i.decode() for i, _ in rdb.xrange("cam")]
        got = []
        while len(got) < len(kept):
            got += read_delivery(ws)
        assert [e[1] for e in got] == kept


@pytest.mark.usefixtures("redis_7")
def test_a_refused_batch_does_not_make_a_gap(server, rdb):
    """Entries added and taken back by a refused batch are not trimmed ones."""
    from support.ws import expect_close

    ids = push(rdb, "cam", b"a", b"b", id="5000-*")
    with ws_connect(server, "/data/cam/push", batch="true") as ws:
        ws.send(json.dumps([["cam", "9000-0", 0], ["cam", "100-0", 1]]))
        ws.send(b"xy")
        code, reason = expect_close(ws)
    assert code == 1007 and ("older" in reason or "newer" in reason)
    assert [i.decode() for i, _ in rdb.xrange("cam")] == ids
    with ws_connect(server, "/data/cam/pull", last_entry_id="1000", count="10", gaps="true") as ws:
        assert [e[1] for e in read_message(ws)] == ids


def test_untrimmed_and_trimmed_streams_on_redis_6_2(tmp_path, redis_6_2):
    from support.servers import live_server, make_settings

    rdb = redis_6_2.client()
    rdb.flushall()
    with live_server(make_settings(tmp_path, redis_6_2.url, max_len=5)) as server:
        ids = push(rdb, "cam", b"a", id="5000-0") + push(rdb, "cam", b"b", id="5000-1")
        with ws_connect(server, "/data/cam/pull", last_entry_id="1000", count="10", gaps="true") as ws:
            assert [e[1] for e in read_message(ws)] == ids
        more = push(rdb, "cam", *[b"%d" % i for i in range(6)], maxlen=5, approximate=False)
        with ws_connect(server, "/data/cam/pull", last_entry_id="1000", count="10", gaps="true") as ws:
            assert read_message(ws) == {"gap": {"sid": "cam", "after": "1000-0", "oldest": more[1]}}
            assert [e[1] for e in read_message(ws)] == more[1:]
    rdb.close()
