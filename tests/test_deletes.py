"""A deleted entry is never delivered: not from a process's memory, not after the stream is
re-created (with older ids, as `ptgstore load` does), not through another process on the same Redis."""
import contextlib

import httpx
import pytest

from ptgstore.testing import wait_until
from support.servers import live_server, make_settings
from support.ws import read_delivery, ws_connect


def push(rdb, sid, *payloads):
    return [rdb.xadd(sid, {"d": p}).decode() for p in payloads]


def push_at(rdb, sid, ids, payloads):
    """Entries with the given (old) ids, as a load of exported data writes them."""
    return [rdb.xadd(sid, {"d": p}, id=i).decode() for i, p in zip(ids, payloads)]


def push_together(rdb, sid, *payloads):
    """Entries in one transaction: one wake of the follower buffers them all."""
    with rdb.pipeline(transaction=True) as pipe:
        for p in payloads:
            pipe.xadd(sid, {"d": p})
        return [i.decode() for i in pipe.execute()]


def delete(server, sid):
    with server.http() as http:
        reply = http.delete(f"/streams/{sid}")
    assert reply.status_code == 200, reply.text
    return reply.json()["deleted"]


def following(server, *sids):
    """Wait until the server's followers of these streams buffer what comes next."""
    followers = server.app.state.hub.followers
    wait_until(lambda: all(sid in followers and followers[sid].ready.is_set() for sid in sids),
               what=f"followers of {sids}")


def buffered(server, sid, count):
    follower = server.app.state.hub.followers.get(sid)
    return follower is not None and len(follower.ids) >= count


@pytest.fixture
def pair(tmp_path, rdb, redis_server):
    """Two API processes' apps (each its own hub) on one Redis."""
    with live_server(make_settings(tmp_path / "one", redis_server.url)) as one, \
            live_server(make_settings(tmp_path / "two", redis_server.url)) as two:
        yield one, two


@pytest.mark.parametrize("through", ["same", "other"])
def test_new_pull_inside_the_buffer_gets_only_the_new_stream(pair, rdb, through):
    one, two = pair
    deleter = one if through == "same" else two
    with ws_connect(one, "/data/cam/pull", count="10") as live:
        following(one, "cam")
        old = push_together(rdb, "cam", b"old 1", b"old 2")
        got = read_delivery(live)
        while len(got) < 2:
            got += read_delivery(live)
        assert buffered(one, "cam", 2)
        assert delete(deleter, "cam") == ["cam"]
        queries = ({"last_entry_id": "0"}, {"last_entry_id": old[0]}, {"last_entry_id": "0", "latest": "true"})
        with contextlib.ExitStack() as stack:
            pulls = [stack.enter_context(ws_connect(one, "/data/cam/pull", count="10", **q)) for q in queries]
            wait_until(lambda: len(one.app.state.hub.followers["cam"].readers) == 4, what="the new pulls")
            new = push(rdb, "cam", b"new")
            for ws, query in zip(pulls, queries):
                assert read_delivery(ws) == [("cam", new[0], b"new")], query


@pytest.mark.parametrize("through", ["same", "other"])
def test_refilled_with_older_ids_every_pull_gets_the_stored_entries(pair, rdb, through):
    one, two = pair
    deleter = one if through == "same" else two
    with ws_connect(one, "/data/cam/pull", count="10") as across:
        following(one, "cam")
        old = push(rdb, "cam", b"deleted")
        assert read_delivery(across) == [("cam", old[0], b"deleted")]
        assert delete(deleter, "cam") == ["cam"]
        loaded = push_at(rdb, "cam", ["1000-0", "2000-0"], [b"loaded 1", b"loaded 2"])
        expected = [("cam", loaded[0], b"loaded 1"), ("cam", loaded[1], b"loaded 2")]
        with ws_connect(one, "/data/cam/pull", last_entry_id="0", count="10") as fresh:
            assert read_delivery(fresh) == expected
        # the pull open across the delete sees the stream as new: from its beginning
        got = read_delivery(across)
        while len(got) < 2:
            got += read_delivery(across)
        assert got == expected
        # and goes on live in the new stream
        later = push(rdb, "cam", b"later")
        assert read_delivery(across) == [("cam", later[0], b"later")]
    with one.http() as http:
        assert http.get("/streams/cam").json()["first-entry"] == loaded[0]


@pytest.mark.parametrize("through", ["same", "other"])
def test_ack_consumer_gets_nothing_deleted_after_its_ack(pair, rdb, through):
    one, two = pair
    deleter = one if through == "same" else two
    with ws_connect(one, "/data/cam/pull", count="1", ack="true") as consumer:
        following(one, "cam")
        old = push_together(rdb, "cam", b"a", b"b", b"c")
        assert read_delivery(consumer) == [("cam", old[0], b"a")]
        assert buffered(one, "cam", 3)
        assert delete(deleter, "cam") == ["cam"]
        consumer.send("next")
        new = push(rdb, "cam", b"new")
        assert read_delivery(consumer) == [("cam", new[0], b"new")]


def test_latest_pull_open_across_a_delete(pair, rdb):
    one, two = pair
    with ws_connect(one, "/data/cam+imu/pull", latest="true", count="5") as ws:
        following(one, "cam", "imu")
        old = push(rdb, "cam", b"old")
        assert read_delivery(ws) == [("cam", old[0], b"old")]
        assert delete(two, "cam") == ["cam"]
        loaded = push_at(rdb, "cam", ["1000-0"], [b"loaded"])
        assert read_delivery(ws) == [("cam", loaded[0], b"loaded")]


@pytest.mark.slow
def test_two_uvicorn_processes_on_one_redis(tmp_path, rdb, redis_server):
    """The same through `ptgstore serve` processes: delete through one, pull through the other."""
    from support.servers import ServeProcess

    with contextlib.ExitStack() as stack:
        one = stack.enter_context(ServeProcess(tmp_path / "one", "--redis-url", redis_server.url)).wait_ready()
        two = stack.enter_context(ServeProcess(tmp_path / "two", "--redis-url", redis_server.url)).wait_ready()
        with ws_connect(two, "/data/cam/pull", count="10", token=two.token()) as across:
            wait_until(lambda: any(c.get("cmd") == "xread" for c in rdb.client_list()), what="the follower")
            old = push(rdb, "cam", b"deleted 1", b"deleted 2")
            got = read_delivery(across)
            while len(got) < 2:
                got += read_delivery(across)
            assert [e[1] for e in got] == old
            reply = httpx.delete(f"{one.url}/streams/cam", headers={"Authorization": f"Bearer {one.token()}"},
                                 timeout=10)
            assert reply.json() == {"deleted": ["cam"]}
            loaded = push_at(rdb, "cam", ["1000-0"], [b"loaded"])
            with ws_connect(two, "/data/cam/pull", last_entry_id="0", count="10", token=two.token()) as fresh:
                assert read_delivery(fresh) == [("cam", loaded[0], b"loaded")]
            assert read_delivery(across) == [("cam", loaded[0], b"loaded")]


def test_refilled_stream_on_redis_6_2(tmp_path, redis_6_2):
    rdb = redis_6_2.client()
    rdb.flushall()
    with live_server(make_settings(tmp_path / "one", redis_6_2.url)) as one, \
            live_server(make_settings(tmp_path / "two", redis_6_2.url)) as two:
        with ws_connect(one, "/data/cam/pull", count="1", ack="true") as consumer:
            following(one, "cam")
            old = push_together(rdb, "cam", b"a", b"b")
            assert read_delivery(consumer) == [("cam", old[0], b"a")]
            assert delete(two, "cam") == ["cam"]
            loaded = push_at(rdb, "cam", ["1000-0"], [b"loaded"])
            consumer.send("next")
            assert read_delivery(consumer) == [("cam", loaded[0], b"loaded")]
    rdb.close()
