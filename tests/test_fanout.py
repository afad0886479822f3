"""Deliveries written by the follower straight to the pull sockets waiting on a stream (`ptgstore.fanout`):
frames made once, byte-exact for every socket, in order, and a socket that cannot take more now falls
back to its own task without holding up the others."""
from __future__ import annotations

import base64
import contextlib
import os
import socket

import msgpack
import orjson
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader
from support.ws import push, read_delivery, ws_connect

from ptgstore.testing import wait_until
from support.servers import live_server, make_settings
from ptgstore.wsframes import JOIN_BELOW, delivery_frames, text_frame


def parse_frames(data: bytes) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    frames = []
    while True:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            next(parser)
            frames.append(None)  # (the generator waits for more data: none left)
            break
        except StopIteration as done:
            frames.append(done.value)
    return [f for f in frames if f is not None]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, JOIN_BELOW + 1, 300_000])
@pytest.mark.parametrize("header", ['[["cam","1-0",0]]', msgpack.packb([["cam", "1-0", 0]]), "x" * 70_000])
def test_delivery_frames_parse_as_the_two_messages(size, header):
    blob = bytes(range(256)) * (size // 256) + b"\x07" * (size % 256)
    made = delivery_frames(header, blob)
    assert len(made) == (1 if size < JOIN_BELOW else 2)
    if len(made) == 2:
        assert made[1] is blob  # a large blob goes out as it is, never copied
    first, second = parse_frames(b"".join(made))
    text = isinstance(header, str)
    assert first.opcode == (Opcode.TEXT if text else Opcode.BINARY) and first.fin
    assert bytes(first.data) == (header.encode() if text else header)
    assert second.opcode == Opcode.BINARY and second.fin and bytes(second.data) == blob


@pytest.mark.parametrize("text", ["", "1-0", "1700000000000-0," * 5000, "日本"])
def test_an_ack_frame_parses_as_its_text(text):
    (frame,) = parse_frames(text_frame(text))
    assert frame.opcode == Opcode.TEXT and frame.fin and bytes(frame.data).decode() == text


def _directs(hub, sid: str) -> list:
    follower = hub.followers.get(sid)
    return [sub.direct for sub in follower.readers] if follower else []


def _all_parked(hub, sid: str, count: int) -> bool:
    follower = hub.followers.get(sid)
    return follower is not None and len(follower.readers) == count and all(s.parked for s in follower.readers)


def test_waiting_sockets_get_each_entry_written_directly_in_their_codec_and_count(server, rdb):
    queries = [{}, {"count": "100"}, {"header": "msgpack", "count": "100"}, {"count": "2"}, {"ack": "true"}]
    hub = server.app.state.hub
    expected: list[tuple[str, bytes]] = []
    got: list[list] = [[] for _ in queries]
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(ws_connect(server, "/data/cam/pull", **q)) for q in queries]
        for i in range(12):
            # every socket waits for entries: the follower writes the next ones to those that take them
            wait_until(lambda: _all_parked(hub, "cam", len(queries)), what="every socket waiting")
            if i % 4 == 3:  # several in one read, in deliveries of each socket's count
                with rdb.pipeline(transaction=True) as pipe:
                    for k in range(5):
                        pipe.xadd("cam", {"d": b"entry %d.%d" % (i, k) * 50})
                    expected += [(x.decode(), b"entry %d.%d" % (i, k) * 50) for k, x in enumerate(pipe.execute())]
            else:
                data = b"entry %d" % i * 100
                expected += [(push(server, "cam", data)[0], data)]
            for ws, query, mine in zip(sockets, queries, got):
                while len(mine) < len(expected):
                    delivery = read_delivery(ws)
                    assert 0 < len(delivery) <= int(query.get("count", 1))
                    mine += delivery
                    if query.get("ack"):
                        ws.send("more")
        directs = _directs(hub, "cam")
    for mine in got:
        assert [(entry_id, data) for _, entry_id, data in mine] == expected
        assert {sid for sid, _, _ in mine} == {"cam"}
    # the socket with acks is served by its task; the follower wrote every delivery to the others
    assert sorted(d is None for d in directs) == [False] * 4 + [True]
    # (deliveries: one per entry with count=1; 5 entries read at once in 3 with count=2, in 1 with 100)
    assert sorted(d.sent for d in directs if d is not None) == [12, 12, 18, 24]


class SilentPuller:
    """A pull socket whose client reads nothing until told to: the handshake over a plain TCP socket,
    then the server's frames left in the kernel's buffers (a client library would read them into its own)."""

    def __init__(self, server, path: str):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path}?token={server.token()} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.reader = StreamReader()

    def deliveries(self, count: int) -> list:
        """Read and parse `count` deliveries (header and blob messages) as [(sid, id, bytes)]."""
        frames: list[Frame] = []
        parser = Frame.parse(self.reader.read_exact, mask=False)
        next(parser)
        while len(frames) < 2 * count:
            self.reader.feed_data(self.sock.recv(1 << 20))
            while True:
                try:
                    next(parser)
                    break  # (needs more data)
                except StopIteration as done:
                    frames.append(done.value)
                    parser = Frame.parse(self.reader.read_exact, mask=False)
        out = []
        for header, blob in zip(frames[0::2], frames[1::2]):
            assert header.opcode == Opcode.TEXT and blob.opcode == Opcode.BINARY
            items = orjson.loads(header.data)
            ends = [item[2] for item in items[1:]] + [len(blob.data)]
            out += [(sid, entry_id, bytes(blob.data[start:end])) for (sid, entry_id, start), end in zip(items, ends)]
        return out

    def close(self) -> None:
        self.sock.close()


def test_a_socket_that_takes_nothing_falls_back_to_its_task_and_holds_up_no_other(server, rdb):
    hub = server.app.state.hub
    size, count = 256 * 1024, 100  # 25 MB: more than the kernel's socket buffers hold for a reader that stops
    entries = [bytes([i]) * size for i in range(count)]
    slow = SilentPuller(server, "/data/cam/pull")
    try:
        wait_until(lambda: _all_parked(hub, "cam", 1), what="the silent socket waiting")
        (slow_sub,) = hub.followers["cam"].readers
        with ws_connect(server, "/data/cam/pull") as fast:
            wait_until(lambda: _all_parked(hub, "cam", 2), what="both sockets waiting")
            got_fast: list = []
            with ws_connect(server, "/data/cam/push", ack="true") as pusher:
                for data in entries:
                    pusher.send(data)
                    pusher.recv(timeout=30)
                    got_fast += read_delivery(fast, timeout=30)  # the fast socket keeps up, entry by entry
            assert [data for _, _, data in got_fast] == entries
            # the silent socket could not take them all: its task took over, waiting for its transport
            assert slow_sub.direct.sent < count
            got_slow = slow.deliveries(count)
            assert [entry_id for _, entry_id, _ in got_slow] == [entry_id for _, entry_id, _ in got_fast]
            assert [data for _, _, data in got_slow] == entries
            # once it caught up, the follower writes to it directly again
            wait_until(lambda: slow_sub.parked, what="the slow socket waiting again")
            sent = slow_sub.direct.sent
            with ws_connect(server, "/data/cam/push", ack="true") as pusher:
                pusher.send(b"one more")
                pusher.recv(timeout=30)
            assert slow.deliveries(1)[0][2] == b"one more" == read_delivery(fast)[0][2]
            assert slow_sub.direct.sent == sent + 1
    finally:
        slow.close()


def test_large_deliveries_reach_every_socket_byte_exact(tmp_path, redis_server, rdb):
    # deliveries of one 3 MiB entry (written as heads, then the blob itself) and of 100 small ones in one
    with live_server(make_settings(tmp_path, redis_server.url)) as live, contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(ws_connect(live, "/data/cam/pull", count="100")) for _ in range(3)]
        hub = live.app.state.hub
        wait_until(lambda: _all_parked(hub, "cam", 3), what="every socket waiting")
        big = bytes(range(256)) * (3 * 4096)
        ids = push(live, "cam", big)
        with rdb.pipeline(transaction=True) as pipe:
            for i in range(100):
                pipe.xadd("cam", {"d": orjson.dumps({"i": i})})
            ids += [x.decode() for x in pipe.execute()]
        for ws in sockets:
            got: list = []
            while len(got) < 101:
                got += read_delivery(ws)
            assert [entry_id for _, entry_id, _ in got] == ids
            assert got[0][2] == big and [orjson.loads(data)["i"] for _, _, data in got[1:]] == list(range(100))


def test_each_delivery_is_encoded_once_for_all_its_sockets_and_forgotten_with_it(server, monkeypatch):
    """The wire form is the route side's (`fanout.made`, keyed by the hub's shared delivery): one
    encoding per delivery and header codec however many sockets take it, directly or through their
    task (acks), and nothing of it kept once the deliveries are gone."""
    from ptgstore import fanout

    packed: list[int] = []
    pack_entries = fanout.pack_entries
    monkeypatch.setattr(fanout, "pack_entries", lambda entries: packed.append(len(entries)) or pack_entries(entries))
    queries = [{}] * 8 + [{"header": "msgpack"}] * 4 + [{"ack": "true"}] * 3
    hub = server.app.state.hub
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(ws_connect(server, "/data/cam/pull", **q)) for q in queries]
        for i in range(4):
            wait_until(lambda: _all_parked(hub, "cam", len(queries)), what="every socket waiting")
            data = b"frame %d" % i * 1000
            (entry_id,) = push(server, "cam", data)
            for ws, query in zip(sockets, queries):
                assert read_delivery(ws) == [("cam", entry_id, data)]
                if query.get("ack"):
                    ws.send("more")
        assert packed == [1] * 8  # 4 deliveries, each in JSON and in MessagePack once
    wait_until(lambda: "cam" not in hub.followers, what="the follower to be released")
    wait_until(lambda: len(fanout._made) == 0, what="what was made of the deliveries to go with them")
