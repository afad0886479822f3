"""Small helpers for WebSocket tests: connect with a token, read deliveries, expect closes."""
from __future__ import annotations

import msgpack
import orjson
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def ws_connect(server, path: str, **query):
    query.setdefault("token", server.token())
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return connect(f"{server.ws_url}{path}?{qs}", open_timeout=10, max_size=64 * 1024 * 1024,
                   compression=None)


def push(server, sid: str, *entries: bytes) -> list[str]:
    """Push entries one by one with acks; their ids."""
    with ws_connect(server, f"/data/{sid}/push", ack="true") as ws:
        ids = []
        for entry in entries:
            ws.send(entry)
            ids.append(ws.recv(timeout=10))
        return ids


def read_delivery(ws, timeout: float = 10.0):
    """One pull delivery as [(sid, id, bytes)], offsets checked against the blob."""
    header = ws.recv(timeout=timeout)
    items = msgpack.unpackb(header) if isinstance(header, bytes) else orjson.loads(header)
    blob = ws.recv(timeout=timeout)
    assert isinstance(blob, bytes)
    starts = [item[2] for item in items]
    ends = starts[1:] + [len(blob)]
    return [(sid, entry_id, blob[s:e]) for (sid, entry_id, s), e in zip(items, ends)]


def expect_close(ws, timeout: float = 10.0):
    """The close code and reason the server ends with (no other message may come first)."""
    try:
        message = ws.recv(timeout=timeout)
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "the connection dropped without a close frame"
        return closed.rcvd.code, closed.rcvd.reason
    raise AssertionError(f"expected a close, got a message: {message!r:.200}")


def id_pair(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)
