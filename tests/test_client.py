"""The Python client against a live server: every call (blocking and async), typed errors, resume."""
import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ptgstore.testing import free_port, wait_until
from support.servers import live_server, make_settings
from ptgstore.client import (
    AsyncClient, AuthError, BadRequest, Client, Entry, NotFound, PtgError, ServerError, StreamClosed, Unreachable,
    cursor_for_time,
)


def xadd(rdb, sid, *payloads):
    return [rdb.xadd(sid, {"d": p}).decode() for p in payloads]


def stored(rdb, sid):
    return [(i.decode(), f[b"d"]) for i, f in rdb.xrange(sid)]


# -- the blocking client --------------------------------------------------------------------------

def test_blocking_client_every_call(server, rdb):
    frames = [os.urandom(n) for n in (0, 1, 70_000, 1_000_000)]
    with Client(server.url, username="test", password="test") as client:
        assert client.token is None, "constructing a client does no I/O"
        assert client.ping() is True
        assert server.app.state.authenticator.verify(client.token) == "test", "the first call logged in"
        assert client.update("glf/left:cam", {"fps": 30, "max_len": 50}) == {"fps": 30, "max_len": 50}
        ids = client.push("glf/left:cam", frames)
        assert len(ids) == 4 and stored(rdb, "glf/left:cam") == list(zip(ids, frames))
        assert client.push("other", b"one entry") == [stored(rdb, "other")[0][0]]

        assert client.streams() == ["glf/left:cam", "other"]
        infos = {info["sid"]: info for info in client.streams(info=True)}
        assert infos["glf/left:cam"]["length"] == 4 and infos["other"]["length"] == 1
        info = client.info("glf/left:cam")
        assert (info["meta"], info["first-entry"], info["last-entry"]) == ({"fps": 30, "max_len": 50}, ids[0], ids[3])
        assert client.update("glf/left:cam", {"fps": 60}, override=True) == {"fps": 60}

        assert client.read("glf/left:cam", "0", count=2) == [Entry("glf/left:cam", i, f) for i, f in zip(ids[:2], frames)]
        assert client.read("glf/left:cam", ids[1], count=10) == [Entry("glf/left:cam", i, f)
                                                                 for i, f in zip(ids[2:], frames[2:])]
        assert client.read("glf/left:cam", "$") == []
        assert client.latest("glf/left:cam") == [("glf/left:cam", ids[3], frames[3])]
        assert [e.entry_id for e in client.latest("glf/left:cam", count=3)] == ids[1:]
        both = client.latest(["glf/left:cam", "other"])
        assert [(e.stream_id, e.entry_id) for e in both] == [("glf/left:cam", ids[3]), ("other", client.latest("other")[0][1])]

        pulled = list(client.pull("glf/left:cam", last_entry_id="0", count=3, limit=4))
        assert pulled == [Entry("glf/left:cam", i, f) for i, f in zip(ids, frames)]

        assert sorted(client.delete(["glf/left:cam", "other", "never"])) == ["glf/left:cam", "other"]
        assert client.streams() == []
        with pytest.raises(NotFound, match="does not exist"):
            client.info("other")
        open_pull = client.pull("more", "0")
        client.push("more", b"m")
        assert next(open_pull).data == b"m"
    with pytest.raises(PtgError, match="the client is closed"):
        next(open_pull)  # close() ended the pull too
    with pytest.raises(PtgError, match="the client is closed"):
        client.streams()


def test_blocking_pusher_batches_timestamps_and_several_streams(server, rdb):
    entries = [os.urandom(3000) for _ in range(25)]
    with Client(server.url, token=server.token(), max_batch_bytes=10_000, max_batch_entries=4) as client:
        with client.pusher() as pusher:
            ids = pusher.push("imu", entries)
            assert stored(rdb, "imu") == list(zip(ids, entries))
            # entry id strings are kept as ids; epoch seconds become <ms>-<seq>
            explicit = pusher.push("replay", [b"a", b"b", b"c"], timestamps=["5-0", "5-1", 7.0011])
            assert explicit == ["5-0", "5-1", "7001-0"]
            mixed = pusher.push_items([("x", None, b"1"), ("y", None, b"2"), ("x", None, b"3")])
        assert [e for e, _ in stored(rdb, "x")] == [mixed[0], mixed[2]] and stored(rdb, "y")[0][0] == mixed[1]
        assert client.push("replay", [b"d"], timestamps=[10.0]) == ["10000-0"]


@pytest.mark.slow
def test_pull_from_time_per_stream_cursors_and_timeout(server, rdb):
    with Client(server.url, token=server.token()) as client:
        client.push("a", [b"a1", b"a2", b"a3"], timestamps=[1000.0, 2000.0, 3000.0])
        client.push("b", [b"b1", b"b2"], timestamps=["1000000-0", "2000000-0"])
        from_time = list(client.pull("a", datetime.fromtimestamp(2000, tz=timezone.utc), timeout=0.3))
        assert [e.data for e in from_time] == [b"a2", b"a3"]
        assert list(client.pull("a", 2000.0, limit=1)) == [("a", "2000000-0", b"a2")]
        deliveries = list(client.pull_deliveries("a", "0", count=2, timeout=0.3))
        assert [[e.data for e in d] for d in deliveries] == [[b"a1", b"a2"], [b"a3"]]
        assert [len(d) for d in client.pull_deliveries("a", "0", count=2, limit=3)] == [2, 1]
        got = list(client.pull(["a", "b"], ["2000000-0", "0"], timeout=0.3))
        assert sorted(e.data for e in got) == [b"a3", b"b1", b"b2"]
        assert [e.data for e in got if e.stream_id == "b"] == [b"b1", b"b2"]
    assert cursor_for_time(2.0) == "1999-18446744073709551615"
    assert cursor_for_time(0) == "0-0"


@pytest.mark.slow
def test_readme_script_runs_as_written(server, tmp_path):
    """The scripts of the Python client's page (docs/client.md), the first also the README's, against this server."""
    root = Path(__file__).parent.parent
    scripts = re.findall(r"```python\n(.*?)```", (root / "docs" / "client.md").read_text(), re.S)
    assert len(scripts) == 2
    assert re.findall(r"```python\n(.*?)```", (root / "README.md").read_text(), re.S) == scripts[:1]
    outputs = []
    for i, script in enumerate(scripts):
        assert "http://127.0.0.1:7890" in script
        path = tmp_path / f"script{i}.py"
        path.write_text(script.replace("http://127.0.0.1:7890", server.url))
        done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert "pulled 3 frames" in outputs[0] and "demo/camera" in outputs[0]
    assert outputs[0].count("b'frame ") == 3
    lines = outputs[1].splitlines()
    assert sorted(line.split()[0] for line in lines) == ["demo/camera"] * 3 + ["demo/imu"] * 10


# -- the async client -----------------------------------------------------------------------------

def test_async_client_every_call(server, rdb):
    async def scenario():
        async with AsyncClient(server.url, username="test", password="test") as client:
            assert await client.ping() is True
            token = await client.login()
            assert token == client.token
            await client.update("cam", {"kind": "jpeg"})
            ids = await client.push("cam", [b"x" * 10, b"y" * 20])
            assert await client.streams() == ["cam"]
            assert (await client.streams(info=True))[0]["length"] == 2
            assert (await client.info("cam"))["meta"] == {"kind": "jpeg"}
            assert await client.read("cam", "0") == [("cam", ids[0], b"x" * 10), ("cam", ids[1], b"y" * 20)]
            assert await client.latest("cam") == [("cam", ids[1], b"y" * 20)]
            async with client.pusher() as pusher:
                more = await pusher.push("cam", [b"z"])

            # `$` is fixed when the pull starts: only what is pushed afterwards comes
            pull = client.pull("cam", "$", limit=2)
            first = asyncio.ensure_future(pull.__anext__())
            await asyncio.to_thread(wait_until, lambda: "cam" in server.app.state.hub.followers,
                                    what="the pull socket")
            newer = await client.push("cam", [b"new1", b"new2"])
            assert await first == ("cam", newer[0], b"new1")
            assert [e async for e in pull] == [("cam", newer[1], b"new2")]
            assert [e.entry_id async for e in client.pull("cam", "0", count=2, limit=5)] == ids + more + newer
            assert await client.delete("cam") == ["cam"]

    asyncio.run(asyncio.wait_for(scenario(), 60))


# -- typed errors ---------------------------------------------------------------------------------

def test_errors_carry_the_servers_reason(server, rdb):
    with Client(server.url, token="not-a-token") as client:
        with pytest.raises(AuthError) as refused:
            client.streams()
        assert refused.value.status == 401
        with pytest.raises(AuthError) as handshake:
            list(client.pull("cam", "0", limit=1))
        assert handshake.value.status == 401
    with Client(server.url) as client:
        with pytest.raises(AuthError, match="pass token=, or username= and password=") as missing:
            client.streams()
        assert missing.value.status == 401 and "username=" not in missing.value.detail, "detail: the server's own"
        with pytest.raises(AuthError, match="incorrect username or password"):
            client.login("alice", "wrong")
    with Client(server.url, token=server.token()) as client:
        with pytest.raises(BadRequest, match="malformed entry id '12-x'"):
            client.read("cam", "12-x")  # refused before sending, with the server's words
        with pytest.raises(BadRequest, match="count must be") as bad:
            client.read("cam", "0", count=0)
        assert bad.value.status == 400 and "'0'" in bad.value.detail
        with pytest.raises(BadRequest, match="max_len"):
            client.update("cam", {"max_len": -1})
        client.push("cam", [b"late"], timestamps=["9000-0"])
        with client.pusher() as pusher:
            with pytest.raises(StreamClosed) as stale:
                pusher.push("cam", [b"early"], timestamps=["10-0"])
        assert stale.value.code == 1007 and stale.value.reason
        with pytest.raises(StreamClosed) as refused_pull:
            list(client.pull("cam", "0", count=0))
        assert refused_pull.value.code == 1007 and "count" in refused_pull.value.reason
    assert [e for e, _ in stored(rdb, "cam")] == ["9000-0"]
    with Client(server.url, token=server.token()) as client:
        with pytest.raises(FileNotFoundError), client.pusher():
            open(server.settings.data_dir + "/no-such-file")  # the caller's own error passes through unchanged
    with Client(f"http://127.0.0.1:{free_port()}", token="t") as client:
        with pytest.raises(Unreachable):
            client.streams()
        started = time.monotonic()
        with pytest.raises(Unreachable):
            next(client.pull("cam", "0"))
        assert time.monotonic() - started < 5, "no reconnect loop before the first connection"
        with pytest.raises(Unreachable, match="Connect call failed"), client.pusher() as pusher:
            pusher.push("cam", b"x")  # refused: nobody there, said at once
        assert time.monotonic() - started < 5


def test_server_error_when_the_store_is_down(tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with live_server(make_settings(tmp_path, dead)) as down, Client(down.url, token=down.token()) as client:
        with pytest.raises(ServerError) as failed:
            client.ping()
        assert failed.value.status == 503 and "unavailable" in failed.value.detail


# -- resume after a dropped connection ------------------------------------------------------------

def test_pull_resumes_after_a_server_restart_without_loss_or_repeat(tmp_path, rdb, redis_server):
    """The server goes away mid-stream (its sockets are closed), entries arrive meanwhile, a new server
    starts on the same port: the puller reconnects from the last id of each stream it delivered."""
    settings = make_settings(tmp_path, redis_server.url)
    port = free_port()
    expected = {"a": xadd(rdb, "a", *[b"a%d" % i for i in range(7)]),
                "b": xadd(rdb, "b", *[b"b%d" % i for i in range(5)])}
    with live_server(settings, port) as first:
        client = Client(first.url, token=first.token(), reconnect_timeout=10)
    got = []
    try:
        with live_server(settings, port):
            pull = client.pull(["a", "b"], "0", count=2)
            got += [next(pull) for _ in range(5)]  # mid-delivery: more are buffered on the socket
        expected["a"] += xadd(rdb, "a", b"a-while-down")
        with live_server(settings, port):
            expected["b"] += xadd(rdb, "b", b"b-after-restart")
            while len(got) < 14:
                got.append(next(pull))
        pull.close()
    finally:
        client.close()
    for sid in ("a", "b"):
        assert [e.entry_id for e in got if e.stream_id == sid] == expected[sid]
    assert len({(e.stream_id, e.entry_id) for e in got}) == 14


def test_async_pull_waiting_for_data_survives_a_restart(tmp_path, rdb, redis_server):
    """A puller blocked waiting for new entries when the server goes away gets every later entry once."""
    settings = make_settings(tmp_path, redis_server.url)
    port = free_port()
    holder = {}
    ready = threading.Event()

    async def consume(url, token):
        async with AsyncClient(url, token=token, reconnect_timeout=10) as client:
            pull = client.pull("cam", "$", limit=3)
            first = asyncio.ensure_future(pull.__anext__())
            ready.set()
            holder["got"] = [await first] + [e async for e in pull]

    with live_server(settings, port) as first_server:
        thread = threading.Thread(target=asyncio.run, args=(consume(first_server.url, first_server.token()),))
        thread.start()
        wait_until(ready.is_set, what="the puller to start")
        wait_until(lambda: "cam" in first_server.app.state.hub.followers, what="the pull socket")
    ids = xadd(rdb, "cam", b"while down 1", b"while down 2")
    with live_server(settings, port):
        ids += xadd(rdb, "cam", b"after restart")
        thread.join(20)
    assert not thread.is_alive()
    assert [(e.entry_id, e.data) for e in holder["got"]] == list(zip(ids, [b"while down 1", b"while down 2",
                                                                            b"after restart"]))


@pytest.mark.slow
def test_pusher_waits_out_a_late_acknowledgement_and_stores_once(server, rdb):
    """Redis paused for writes: no ack within the timeout, so the pusher resends on a new socket
    under the same number; both copies run once Redis is back, and one of them stores."""
    with Client(server.url, token=server.token(), timeout=0.3) as client, client.pusher() as pusher:
        rdb.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
        ids = pusher.push("cam", [b"x"])
        assert pusher.summary.reconnects >= 1 and pusher.summary.resends >= 1
    assert stored(rdb, "cam") == [(ids[0], b"x")]


def test_a_producer_id_kept_across_runs_goes_on_from_its_next_number(server, rdb):
    with Client(server.url, token=server.token()) as client:
        with client.pusher(producer_id="headset-7") as pusher:
            first = pusher.push("cam", [b"a", b"b"]) + pusher.push("cam", b"c")
            assert (pusher.producer_id, pusher.next_seq) == ("headset-7", 3)
        with client.pusher(producer_id="headset-7", first_seq=3) as pusher:
            later = pusher.push("cam", b"d")
        with pytest.raises(StreamClosed, match="batch 1 was stored with 2 entries, not 1") as refused, \
                client.pusher(producer_id="headset-7") as pusher:
            pusher.push("cam", b"again")  # numbered from 1 again: taken for a resend, which it cannot be
        assert refused.value.code == 1008
    assert [d for _, d in stored(rdb, "cam")] == [b"a", b"b", b"c", b"d"] and stored(rdb, "cam")[3][0] == later[0]
    assert len(first) == 3


@pytest.mark.slow
def test_pusher_gives_up_after_reconnect_timeout(server, rdb):
    """An interruption longer than reconnect_timeout is raised, saying the batch may be stored."""
    with Client(server.url, token=server.token(), timeout=0.3, reconnect_timeout=1) as client, \
            client.pusher() as pusher:
        rdb.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
        try:
            with pytest.raises(ServerError, match="no acknowledgement of 1 entries within 0.3 s "
                                                  r"\(gave up after 1 s; batch 1 of producer .*may be stored"):
                pusher.push("cam", [b"x"])
        finally:
            rdb.execute_command("CLIENT", "UNPAUSE")
        y = pusher.push("cam", [b"y"])  # the next batch has a number of its own: never taken for x's
    wait_until(lambda: rdb.xlen("cam") == 2, what="both batches")
    assert [d for _, d in stored(rdb, "cam")] == [b"x", b"y"] and stored(rdb, "cam")[1][0] == y[0]


@pytest.mark.parametrize("sid", ["we ird?#%25&x=1", "caméra/ünï:1", "a;b,c=d@e!"])
def test_any_valid_stream_id_travels_intact(server, rdb, sid):
    with Client(server.url, token=server.token()) as client:
        ids = client.push(sid, [b"one", b"two"]) + client.push(sid, b"three")
        assert stored(rdb, sid) == list(zip(ids, [b"one", b"two", b"three"]))
        assert client.update(sid, {"k": 1}) == {"k": 1} and client.info(sid)["length"] == 3
        assert client.read([sid, "other"], "0") == [(sid, i, d) for i, d in zip(ids, [b"one", b"two", b"three"])]
        assert [e.entry_id for e in client.pull([sid, "other"], "0", limit=3)] == ids
        assert sid in client.streams() and client.delete(sid) == [sid]


ABANDONED_PULLS = {
    "blocking": "from ptgstore.client import Client\n"
                "client = Client({url!r}, token={token!r})\n"
                "pull = client.pull('cam', '0')\n"
                "print(next(pull).data)\n",
    "async": "import asyncio\n"
             "from ptgstore.client import AsyncClient\n"
             "async def main():\n"
             "    async with AsyncClient({url!r}, token={token!r}) as client:\n"
             "        pull = client.pull('cam', '0')\n"
             "        print((await pull.__anext__()).data)\n"
             "asyncio.run(main())\n",
}


@pytest.mark.parametrize("kind", sorted(ABANDONED_PULLS))
@pytest.mark.slow
def test_a_script_that_leaves_a_pull_open_exits_cleanly(server, rdb, kind):
    """A pull left open (and, blocking, a forgotten close()): the script ends at once, nothing on stderr."""
    xadd(rdb, "cam", b"a", b"b")
    script = ABANDONED_PULLS[kind].format(url=server.url, token=server.token())
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, "b'a'\n", "")
    wait_until(lambda: "cam" not in server.app.state.hub.followers, what="the pull socket to close")


# -- first run: the newest entry, history that ends, refusals with their reason ---------------------

def test_pull_from_newest_with_limit_one_gives_the_newest_entry(server, rdb):
    ids = xadd(rdb, "cam", *(b"entry %d" % i for i in range(150)))
    with Client(server.url, token=server.token()) as client:
        assert list(client.pull("cam", last_entry_id="*", limit=1)) == [Entry("cam", ids[-1], b"entry 149")]
        assert [e.entry_id for e in client.pull("cam", "*", limit=3)] == ids[-3:]

    async def newest():
        async with AsyncClient(server.url, token=server.token()) as client:
            return [e async for e in client.pull("cam", "*", limit=1)]

    assert asyncio.run(newest()) == [Entry("cam", ids[-1], b"entry 149")]


def test_history_stops_at_the_last_entries_of_when_it_began(server, rdb):
    a = xadd(rdb, "a", *(b"a%d" % i for i in range(5)))
    b = xadd(rdb, "b", b"b0", b"b1")
    with Client(server.url, token=server.token()) as client:
        got = []
        for n, delivery in enumerate(client.pull_deliveries("a+b+ghost", "0", count=2, stop_when_caught_up=True)):
            if n == 0:
                xadd(rdb, "a", b"later")  # after the reading began: not history
                xadd(rdb, "b", b"later")
            got += delivery
        assert sorted((e.stream_id, e.entry_id) for e in got) == sorted([("a", i) for i in a] + [("b", i) for i in b])
        assert [e.data for e in got if e.stream_id == "a"] == [b"a%d" % i for i in range(5)]
        assert list(client.pull("ghost", "0", stop_when_caught_up=True)) == []
        assert list(client.pull("a", "$", stop_when_caught_up=True)) == []
        assert [e.entry_id for e in client.pull("a", a[1], limit=2, stop_when_caught_up=True)] == a[2:4]
        assert [e.data for e in client.pull("a", "*", count=1, stop_when_caught_up=True)] == [b"later"]


def test_url_without_a_scheme_means_http(server):
    with Client(server.url.removeprefix("http://"), token=server.token()) as client:
        assert client.url == server.url
        assert client.ping() is True


@pytest.mark.parametrize("body,reason", [(b"token expired: log in again\n", "token expired: log in again"),
                                         (b'{"detail": "origin not allowed"}', "origin not allowed"),
                                         (b"", "no reason given")])
def test_refused_handshake_carries_the_reason_in_the_body(body, reason):
    """A handshake refused with an HTTP denial response (a status and a body): the error carries both.
    The refusing server is a real websockets server on loopback that answers every handshake so."""
    from websockets.asyncio.server import serve
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    def refuse(connection, request):
        return Response(403, "Forbidden", Headers({"Content-Length": str(len(body))}), body)

    async def scenario():
        async with serve(lambda ws: ws.close(), "127.0.0.1", 0, process_request=refuse) as server:
            port = server.sockets[0].getsockname()[1]
            async with AsyncClient(f"http://127.0.0.1:{port}", token="t") as client:
                with pytest.raises(AuthError) as refused:
                    await asyncio.wait_for(client.pull("cam", "0").__anext__(), 30)
        return refused.value

    error = asyncio.run(scenario())
    assert (error.status, error.detail) == (403, reason)


def test_a_read_whose_connection_broke_is_sent_again_and_a_push_is_not(server, rdb):
    """The proxy sends its first connection to a port where nothing listens (it hangs up on the client before
    any answer) and the next to the server: a read (and the login) is sent again; a push is not (it may have
    been stored), and stores nothing here."""
    from ptgstore.client import AsyncClient, Unreachable
    from ptgstore.testproxy import CuttingProxy

    dead = free_port()

    async def main():
        with CuttingProxy([dead, server.port]) as proxy:
            async with AsyncClient(proxy.url, username="test", password="test") as client:
                assert await client.ping() is True  # the login went to the dead port, and again to the server
            assert proxy.routed[:2] == [dead, server.port]
            proxy.set_backends([dead])
            async with AsyncClient(proxy.url, token=server.token()) as client:
                before = len(proxy.routed)
                with pytest.raises(Unreachable):
                    await client.push("cam", b"frame")
                assert proxy.routed[before:] == [dead]  # once: not sent again
                assert rdb.exists("cam") == 0

    asyncio.run(main())
