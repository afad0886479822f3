"""Recordings: the recorder writes MCAP files holding exactly the entries stored while it ran;
the routes the original client calls; replay; crash and resume; one recorder among processes."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
from mcap.reader import make_reader
from websockets.exceptions import ConnectionClosed

from conftest import free_port, live_server, make_settings, wait_until
from servers import ServeProcess
from ptgstore.mcapfiles import read_messages
from wsutil import expect_close, ws_connect

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00png-body" * 50


def push_at(server, sids_payloads: dict, hz: float, count: int) -> dict[str, list[tuple[str, bytes]]]:
    """Push `count` entries to each stream at `hz`, one socket per stream with acks; the acked
    (id, bytes) of each stream."""
    pushed: dict[str, list] = {sid: [] for sid in sids_payloads}
    with contextlib.ExitStack() as stack:
        sockets = {sid: stack.enter_context(ws_connect(server, f"/data/{sid}/push", ack="true"))
                   for sid in sids_payloads}
        started = time.monotonic()
        for i in range(count):
            for sid, make in sids_payloads.items():
                data = make(i)
                sockets[sid].send(data)
                pushed[sid].append((sockets[sid].recv(timeout=10), data))
            delay = started + (i + 1) / hz - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing of the load, not synchronisation
    return pushed


def payloads():
    return {
        "cam": lambda i: JPEG + i.to_bytes(4, "big"),
        "depth": lambda i: PNG + i.to_bytes(4, "big"),
        "imu": lambda i: orjson.dumps({"i": i, "acc": [0.1 * i, 0, 9.8]}),
    }


def recorded(server_root: Path, rec_id: str) -> dict[str, list[tuple[str, bytes]]]:
    files = sorted((server_root / rec_id).glob("*.mcap"))
    out: dict[str, list] = {}
    for message in read_messages(files):
        out.setdefault(message.sid, []).append((message.entry_id, message.data))
    return out


@pytest.fixture
def rec_server(tmp_path, rdb, redis_server):
    settings = make_settings(tmp_path, redis_server.url, recording_segment_seconds=1)
    with live_server(settings) as live:
        yield live


def root_of(server) -> Path:
    return server.app.state.recorder.root


def test_record_three_streams_at_30hz_reads_back_exactly(rec_server):
    http = rec_server.http()
    before = push_at(rec_server, payloads(), hz=30, count=5)  # stored before the start: not recorded
    rec_id = http.put("/recordings/start", params={"rec_id": "kitchen-1"}).json()
    assert rec_id == "kitchen-1"
    assert http.get("/recordings/current").json() == "kitchen-1"
    pushed = push_at(rec_server, payloads(), hz=30, count=75)  # 2.5 s: several segments
    assert http.put("/recordings/stop").json() == 1
    after = push_at(rec_server, payloads(), hz=30, count=3)  # after the stop: not recorded
    assert http.get("/recordings/current").json() is None

    got = recorded(root_of(rec_server), rec_id)
    assert got == pushed  # every entry once, byte-exact, in id order, nothing before or after
    assert not set(before["cam"]) & set(got["cam"]) and not set(after["cam"]) & set(got["cam"])

    files = sorted((root_of(rec_server) / rec_id).glob("*.mcap"))
    assert len(files) >= 2
    with open(files[0], "rb") as f:  # the standard reader: chunked, indexed, channels per stream
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary.chunk_indexes and summary.statistics.message_count > 0
        channels = {c.topic: c for c in summary.channels.values()}
        assert channels["cam"].message_encoding == "json"
        assert summary.schemas[channels["cam"].schema_id].name == "foxglove.CompressedImage"
        assert channels["imu"].message_encoding == "application/octet-stream"
        schema, channel, message = next(reader.iter_messages(topics=["cam"]))
        image = json.loads(message.data)
        assert image["format"] == "jpeg" and base64.b64decode(image["data"]) == pushed["cam"][0][1]
        ms, seq = pushed["cam"][0][0].split("-")
        assert message.log_time == int(ms) * 1_000_000 + int(seq) and message.sequence == int(seq)

    info = http.get(f"/recordings/{rec_id}").json()
    assert info["name"] == rec_id and info["active"] is False and info["gaps"] == 0
    for sid, entries in pushed.items():
        stream = info["streams"][sid]
        assert stream["count"] == len(entries)
        assert stream["bytes"] == sum(len(d) for _, d in entries)
        assert stream["first-entry"] == entries[0][0] and stream["last-entry"] == entries[-1][0]
    assert info["files"] == [f.name for f in files]
    assert info["size"] == sum(f.stat().st_size for f in files)
    assert 2 <= info["duration_secs"] <= 4
    # the start and the stop are announced as the original did
    events = http.get("/data/event:recording:id", params={"last_entry_id": "0", "count": 10})
    assert events.content == b"kitchen-1"
