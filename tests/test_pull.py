"""WebSocket pull: blocking delivery, cursors, extensions, fan-out to many sockets, no leaks."""
import asyncio
import contextlib
import os

import msgpack
import orjson
import pytest
import websockets

from ptgstore.testing import wait_until
from support.ws import expect_close, id_pair, read_delivery, ws_connect


def push(rdb, sid, *payloads):
    return [rdb.xadd(sid, {"d": p}).decode() for p in payloads]


def test_dollar_waits_for_new_entries_only(server, rdb):
    push(rdb, "cam", b"old")
    with ws_connect(server, "/data/cam/pull") as ws:
        wait_until(lambda: "cam" in server.app.state.hub.followers, what="the follower")
        new = push(rdb, "cam", b"new")
        assert read_delivery(ws) == [("cam", new[0], b"new")]


def test_blocking_pull_is_woken_by_a_later_push(server, rdb):
    with ws_connect(server, "/data/cam/pull", count="10") as puller:
        wait_until(lambda: "cam" in server.app.state.hub.followers, what="the follower")
        with ws_connect(server, "/data/cam/push", ack="true") as pusher:
            big = os.urandom(4 * 1024 * 1024)
            pusher.send(big)
            entry_id = pusher.recv(timeout=10)
        assert read_delivery(puller) == [("cam", entry_id, big)]


def test_dollar_is_fixed_at_accept(server, rdb):
    """Entries pushed between accept and the first wait are not skipped."""
    with ws_connect(server, "/data/cam/pull", count="100") as ws:
        ids = push(rdb, "cam", *[b"%d" % i for i in range(50)])
        got = []
        while len(got) < 50:
            got += read_delivery(ws)
    assert [e[1] for e in got] == ids


def test_history_from_zero_then_live(server, rdb):
    old = push(rdb, "cam", b"a", b"b", b"c")
    with ws_connect(server, "/data/cam/pull", last_entry_id="0", count="2") as ws:
        assert [e[1] for e in read_delivery(ws)] == old[:2]
        assert [e[1] for e in read_delivery(ws)] == old[2:]
        new = push(rdb, "cam", b"d")
        assert read_delivery(ws) == [("cam", new[0], b"d")]


def test_explicit_id_and_star(server, rdb):
    ids = push(rdb, "cam", b"a", b"b", b"c", b"d")
    with ws_connect(server, "/data/cam/pull", last_entry_id=ids[1], count="10") as ws:
        assert [e[2] for e in read_delivery(ws)] == [b"c", b"d"]
    with ws_connect(server, "/data/cam/pull", last_entry_id="*", count="2") as ws:
        assert [e[2] for e in read_delivery(ws)] == [b"c", b"d"]


def test_several_streams_and_msgpack_header(server, rdb):
    a = push(rdb, "a", b"a1")
    b = push(rdb, "b", b"b1", b"b2")
    with ws_connect(server, "/data/a+b/pull", last_entry_id="0", count="5", header="msgpack") as ws:
        header = ws.recv(timeout=10)
        assert isinstance(header, bytes)
        items = msgpack.unpackb(header)
        blob = ws.recv(timeout=10)
    by_id = {entry_id: sid for sid, entry_id, _ in items}
    assert by_id == {a[0]: "a", b[0]: "b", b[1]: "b"}
    assert [i[1] for i in items] == sorted([a[0], *b], key=id_pair)
    assert len(blob) == 6


def test_count_is_per_stream(server, rdb):
    push(rdb, "a", *[b"a"] * 5)
    push(rdb, "b", *[b"b"] * 5)
    with ws_connect(server, "/data/a+b/pull", last_entry_id="0", count="2") as ws:
        got = read_delivery(ws)
    assert sorted(e[0] for e in got) == ["a", "a", "b", "b"]


def test_ack_holds_the_next_delivery(server, rdb):
    ids = push(rdb, "cam", b"1", b"2")
    with ws_connect(server, "/data/cam/pull", last_entry_id="0", ack="true") as ws:
        assert read_delivery(ws)[0][1] == ids[0]
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.5)  # nothing until the client acknowledges
        ws.send("ok")
        assert read_delivery(ws)[0][1] == ids[1]


def test_latest_skips_backlog(server, rdb):
    with ws_connect(server, "/data/a+b/pull", latest="true", count="10") as ws:
        wait_until(lambda: len(server.app.state.hub.followers) == 2, what="the followers")
        with ws_connect(server, "/data/*/push", ack="true") as pusher:
            pusher.send(orjson.dumps([["a", 0], ["a", 1], ["a", 2], ["b", 3]]).decode())
            pusher.send(b"1234")
            ids = pusher.recv(timeout=10).split(",")
        got = []
        while {e[0] for e in got} != {"a", "b"}:
            got += read_delivery(ws)
    assert ("a", ids[2], b"3") in got and ("b", ids[3], b"4") in got
    assert all(e[1] in (ids[2], ids[3]) or e[0] == "a" for e in got)


def test_timeout_closes_normally(server):
    with ws_connect(server, "/data/quiet/pull", timeout="200") as ws:
        code, reason = expect_close(ws, timeout=10)
    assert code == 1000 and "timeout" in reason


def test_time_sync_moves_every_cursor(server, rdb):
    for ms in (1000, 2000, 3000):
        rdb.xadd("clock", {"d": b"c%d" % ms}, id=f"{ms}-0")
    for ms in (500, 1500, 2500, 3500):
        rdb.xadd("depth", {"d": b"d%d" % ms}, id=f"{ms}-0")
    with ws_connect(server, "/data/clock+depth/pull", last_entry_id="0", count="1", time_sync_id="clock") as ws:
        first = read_delivery(ws)
        assert [e[1] for e in first] == ["500-0", "1000-0"]
        # depth jumps to the clock's 1000-0: 1500 next, not a backlog
        second = read_delivery(ws)
        assert [e[1] for e in second] == ["1500-0", "2000-0"]
    with ws_connect(server, "/data/clock+depth/pull", last_entry_id="0", count="1", time_sync_id="0") as ws:
        assert [e[1] for e in read_delivery(ws)] == ["500-0", "1000-0"]


@pytest.mark.usefixtures("redis_7")
def test_gaps_are_reported_when_asked(server, rdb):
    ids = push(rdb, "cam", *[b"%d" % i for i in range(10)])
    rdb.xtrim("cam", minid=ids[5], approximate=False)
    with ws_connect(server, "/data/cam/pull", last_entry_id=ids[1], count="10", gaps="true") as ws:
        notice = orjson.loads(ws.recv(timeout=10))
        assert notice == {"gap": {"sid": "cam", "after": ids[1], "oldest": ids[5]}}
        assert [e[1] for e in read_delivery(ws)] == ids[5:]
    with ws_connect(server, "/data/cam/pull", last_entry_id=ids[1], count="10") as ws:
        assert [e[1] for e in read_delivery(ws)] == ids[5:]  # silently from the oldest kept


@pytest.mark.parametrize("query,words", [
    ({"count": "0"}, "count"), ({"last_entry_id": "x-y"}, "entry id"), ({"timeout": "soon"}, "timeout"),
    ({"time_sync_id": "other"}, "time_sync_id"), ({"header": "bson"}, "json or msgpack"),
    ({"latest": "maybe"}, "latest"),
])
def test_bad_pull_options_close_with_reason(server, query, words):
    with ws_connect(server, "/data/cam/pull", **query) as ws:
        code, reason = expect_close(ws)
    assert code == 1007 and words in reason  # every malformed query option: one close code


def test_leaving_frees_followers_and_redis_connections(server, rdb):
    hub = server.app.state.hub
    baseline = len(rdb.client_list())
    with contextlib.ExitStack() as stack:
        for i in range(9):
            stack.enter_context(ws_connect(server, f"/data/s{i % 3}/pull"))
        wait_until(lambda: len(hub.followers) == 3, what="three followers")
        # waiting sockets hold no Redis connection of their own: one reader per stream
        assert len(rdb.client_list()) <= baseline + 3 + 4
    wait_until(lambda: not hub.followers, what="followers to stop")
    wait_until(lambda: len(rdb.client_list()) <= baseline + 2, what="reader connections to close")


@pytest.mark.slow
def test_200_sockets_on_one_stream_each_get_every_entry_in_order(server, rdb):
    async def scenario():
        token = server.token()
        url = f"{server.ws_url}/data/cam/pull?count=100&token={token}"
        sockets = [await websockets.connect(url, max_size=None, compression=None) for _ in range(200)]
        try:
            await asyncio.to_thread(wait_until, lambda: "cam" in server.app.state.hub.followers)
            push_url = f"{server.ws_url}/data/cam/push?ack=true&token={token}"
            ids = []
            async with websockets.connect(push_url, compression=None) as pusher:
                for i in range(50):
                    await pusher.send(b"frame %d" % i)
                    ids.append(await asyncio.wait_for(pusher.recv(), 10))

            async def drain(ws):
                got = []
                while len(got) < 50:
                    header = orjson.loads(await asyncio.wait_for(ws.recv(), 20))
                    blob = await asyncio.wait_for(ws.recv(), 20)
                    starts = [h[2] for h in header] + [len(blob)]
                    got += [(h[1], blob[starts[k]:starts[k + 1]]) for k, h in enumerate(header)]
                return got

            results = await asyncio.gather(*(drain(ws) for ws in sockets))
            expected = [(entry_id, b"frame %d" % i) for i, entry_id in enumerate(ids)]
            assert all(result == expected for result in results)
            # many sockets, a handful of Redis connections
            clients = await asyncio.to_thread(rdb.client_list)
            assert len(clients) < 20
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))

    asyncio.run(asyncio.wait_for(scenario(), 120))
    wait_until(lambda: not server.app.state.hub.followers, what="followers to stop")


def test_sockets_at_one_cursor_share_deliveries_in_their_own_count_and_codec(server, rdb):
    """Sockets following the same stream get the deliveries made once for their cursor and count,
    each in its own header codec."""
    queries = [{"count": "3"}, {"count": "3", "header": "msgpack"}, {"count": "100"}, {"count": "3"}]
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(ws_connect(server, "/data/cam/pull", **q)) for q in queries]
        hub = server.app.state.hub
        wait_until(lambda: "cam" in hub.followers and len(hub.followers["cam"].readers) == 4, what="4 readers")
        with rdb.pipeline(transaction=True) as pipe:  # one XREAD returns all ten
            for i in range(10):
                pipe.xadd("cam", {"d": b"entry %d" % i})
            ids = [i.decode() for i in pipe.execute()]
        expected = [("cam", entry_id, b"entry %d" % i) for i, entry_id in enumerate(ids)]
        for ws, query in zip(sockets, queries):
            sizes, got = [], []
            while len(got) < 10:
                header = ws.recv(timeout=10)
                assert isinstance(header, bytes) == (query.get("header") == "msgpack")
                items = msgpack.unpackb(header) if isinstance(header, bytes) else orjson.loads(header)
                blob = ws.recv(timeout=10)
                ends = [item[2] for item in items[1:]] + [len(blob)]
                got += [(sid, entry_id, blob[start:end]) for (sid, entry_id, start), end in zip(items, ends)]
                sizes.append(len(items))
            assert got == expected
            assert sizes == ([10] if query["count"] == "100" else [3, 3, 3, 1])

def test_slow_socket_falls_behind_and_catches_up_from_redis(tmp_path, rdb, redis_server):
    from support.servers import live_server, make_settings

    settings = make_settings(tmp_path, redis_server.url, hub_buffer=4)
    with live_server(settings) as live:
        with ws_connect(live, "/data/cam/pull", count="3", ack="true") as slow, \
                ws_connect(live, "/data/cam/pull", count="100") as fast:
            wait_until(lambda: "cam" in live.app.state.hub.followers, what="the follower")
            ids = push(rdb, "cam", *[b"%d" % i for i in range(30)])
            got_fast = []
            while len(got_fast) < 30:
                got_fast += read_delivery(fast)
            got_slow = []
            while len(got_slow) < 30:
                got_slow += read_delivery(slow)
                slow.send("next")
        assert [e[1] for e in got_fast] == ids
        assert [e[1] for e in got_slow] == ids
        wait_until(lambda: not live.app.state.hub.followers, what="followers to stop")


def test_pull_from_a_key_that_is_not_a_stream(server, rdb):
    rdb.set("plain", "x")
    with ws_connect(server, "/data/plain/pull") as ws:
        code, reason = expect_close(ws)
    assert code == 1007 and "not a stream" in reason


def test_star_on_an_empty_stream_waits_for_the_first_entry(server, rdb):
    with ws_connect(server, "/data/fresh/pull", last_entry_id="*", count="5") as ws:
        wait_until(lambda: "fresh" in server.app.state.hub.followers, what="the follower")
        ids = push(rdb, "fresh", b"first")
        assert read_delivery(ws) == [("fresh", ids[0], b"first")]
