"""Recordings: the recorder writes MCAP files holding exactly the entries stored while it ran;
the routes the original client calls; replay; crash and resume (several processes: test_recordings_shared.py)."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import signal
import time
from pathlib import Path

import httpx
import orjson
import pytest
from mcap.reader import make_reader
from websockets.exceptions import ConnectionClosed

from ptgstore.testing import wait_until
from support.servers import ServeProcess, live_server, make_settings
from ptgstore.recordings.catalogue import parse_segment_name, segment_name
from ptgstore.recordings.mcapfiles import read_messages
from support.ws import expect_close, ws_connect

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


@pytest.mark.slow
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
    assert [d for _, d in read_stream(http, "event:recording:id")] == [b"kitchen-1", b""]


def record_session(server, name: str, count: int = 30, hz: float = 30, streams: str | None = None):
    http = server.http()
    params = {"rec_id": name, **({"sid": streams} if streams else {})}
    assert http.put("/recordings/start", params=params).json() == name
    pushed = push_at(server, payloads(), hz=hz, count=count)
    assert http.put("/recordings/stop").json() == 1
    return pushed


def read_stream(http, sid: str) -> list[tuple[str, bytes]]:
    response = http.get(f"/data/{sid}", params={"last_entry_id": "0", "count": 100000})
    header = json.loads(response.headers["entry-offset"])
    starts = [item[2] for item in header] + [len(response.content)]
    return [(item[1], response.content[starts[i]:starts[i + 1]]) for i, item in enumerate(header)]


def replay_socket(server, **query):
    return ws_connect(server, "/recordings/replay", **query)


def run_replay(server, **query) -> tuple[list[dict], int]:
    """The progress reports of a replay and the close code that ends it."""
    reports = []
    with replay_socket(server, **query) as ws:
        while True:
            try:
                reports.append(json.loads(ws.recv(timeout=60)))
            except ConnectionClosed as closed:
                return reports, closed.rcvd.code


@pytest.mark.slow
def test_replay_fullspeed_recreates_entries_byte_for_byte(rec_server):
    pushed = record_session(rec_server, "session-a")
    http = rec_server.http()
    reports, code = run_replay(rec_server, rec_id="session-a", sid="cam+imu", prefix="replay:", fullspeed="true",
                               interval="0.05")
    assert code == 1000
    final = reports[-1]
    assert final["active"] == [] and set(final["durations"]) == {"cam", "imu"}
    assert sum(r["updates"].get("cam", 0) for r in reports) == len(pushed["cam"])
    assert final["current"]["cam"] == pytest.approx(final["durations"]["cam"])
    for sid in ("cam", "imu"):
        replayed = read_stream(http, f"replay:{sid}")
        assert [d for _, d in replayed] == [d for _, d in pushed[sid]]
    assert read_stream(http, "replay:depth") == []


@pytest.mark.slow
def test_replay_keep_ids_into_empty_streams_and_refused_into_full_ones(rec_server):
    pushed = record_session(rec_server, "session-k", count=10)
    http = rec_server.http()
    assert run_replay(rec_server, rec_id="session-k", prefix="copy:", fullspeed="true", keep_ids="true")[1] == 1000
    for sid in pushed:
        assert read_stream(http, f"copy:{sid}") == pushed[sid]
    with replay_socket(rec_server, rec_id="session-k", prefix="copy:", keep_ids="true") as ws:
        code, reason = expect_close(ws)
        assert code == 1008 and "empty" in reason


def test_replay_refusals(rec_server):
    record_session(rec_server, "session-r", count=3)
    for query, code, words in [({"rec_id": "nope"}, 1008, "no recording"),
                               ({"rec_id": "session-r", "sid": "ghost"}, 1008, "no stream"),
                               ({"rec_id": "../etc"}, 1008, "'/'"),
                               ({"rec_id": "session-r", "interval": "x"}, 1007, "number"),
                               # a malformed option closes 1007 on every socket route, true/false ones too
                               ({"rec_id": "session-r", "fullspeed": "perhaps"}, 1007, "fullspeed must be true or false")]:
        with replay_socket(rec_server, **query) as ws:
            got_code, reason = expect_close(ws)
            assert (got_code, words in reason) == (code, True), reason


@pytest.mark.slow
def test_record_selected_streams_and_streams_appearing_later(rec_server):
    http = rec_server.http()
    http.put("/recordings/start", params={"rec_id": "only-cam", "sid": "cam"})
    pushed = push_at(rec_server, payloads(), hz=30, count=10)
    http.put("/recordings/stop")
    assert set(recorded(root_of(rec_server), "only-cam")) == {"cam"}
    assert recorded(root_of(rec_server), "only-cam")["cam"] == pushed["cam"]

    http.put("/recordings/start", params={"rec_id": "everything"})
    late = push_at(rec_server, {"late-stream": lambda i: b"late %d" % i}, hz=30, count=40)  # created while recording
    http.put("/recordings/stop")
    got = recorded(root_of(rec_server), "everything")
    assert got["late-stream"] == late["late-stream"]
    assert "event:recording:id" not in got


@pytest.mark.slow
def test_original_client_recording_calls_run_unchanged(rec_server):
    """The HTTP requests ptgctl's `recordings` commands make, with its cookie authentication."""
    cookies = {"authorization": f"Bearer {rec_server.token()}"}
    api = httpx.Client(base_url=rec_server.url, cookies=cookies, timeout=60)
    assert api.get("/recordings", params={"info": None}).json() == []
    name = api.put("/recordings/start", params={"rec_id": "coffee-test-1"}).json()
    assert name == "coffee-test-1"
    assert api.get("/recordings/current", params={}).json() == "coffee-test-1"
    assert api.get("/recordings/current", params={"info": True}).json()["active"] is True
    push_at(rec_server, {"main": lambda i: JPEG + bytes([i])}, hz=30, count=10)
    assert api.put("/recordings/stop").json() == 1
    assert api.put("/recordings/stop").json() == 0
    assert api.get("/recordings", params={"info": False}).json() == ["coffee-test-1"]
    infos = api.get("/recordings", params={"info": True}).json()
    assert infos[0]["name"] == "coffee-test-1" and infos[0]["streams"]["main"]["count"] == 10
    assert api.get("/recordings/coffee-test-1").json()["duration_secs"] > 0
    assert api.delete("/recordings/cache", params={}).json() == {}
    assert api.put("/recordings/coffee-test-1/rename/coffee-test-2").json() == [True, True]
    files = api.get("/recordings/coffee-test-2").json()["files"]
    download = api.get(f"/recordings/static/coffee-test-2/{files[0]}")
    assert download.status_code == 200 and download.content == (root_of(rec_server) / "coffee-test-2" / files[0]).read_bytes()
    # the replay socket, read as ptgctl's ReplayStream does: progress until `active` is empty
    with replay_socket(rec_server, rec_id="coffee-test-2", sid="main", prefix="replay:", fullspeed="true",
                       interval="0.05") as ws:
        while True:
            progress = json.loads(ws.recv(timeout=30))
            for sid in progress["updates"]:
                int(progress["durations"][sid]), int(progress["current"][sid])
            if not progress["active"]:
                break
        assert expect_close(ws)[0] == 1000
    assert api.delete("/recordings/coffee-test-2").json() == [True, True]
    assert api.get("/recordings").json() == []
    no_token = httpx.Client(base_url=rec_server.url, timeout=10)
    assert no_token.get("/recordings").status_code == 401
    assert no_token.put("/recordings/start").status_code == 401


@pytest.mark.slow
def test_rename_hide_delete_static_and_refused_names(rec_server):
    http = rec_server.http()
    record_session(rec_server, "r1", count=5)
    default = http.put("/recordings/start").json()  # a date-time id
    assert len(default) == len("2026.01.31-12.00.00") and default[4] == "."
    assert http.put("/recordings/start", params={"rec_id": "other"}).status_code == 409
    assert http.delete(f"/recordings/{default}").status_code == 409  # active
    http.put("/recordings/stop")

    assert http.put("/recordings/r1/hide").json() is True
    assert "r1" not in http.get("/recordings").json()
    assert "r1" in http.get("/recordings", params={"hidden": "true"}).json()
    assert http.get("/recordings/r1").json()["hidden"] is True
    assert http.put("/recordings/r1/unhide").json() is True
    assert "r1" in http.get("/recordings").json()

    assert http.put(f"/recordings/r1/rename/{default}").status_code == 409  # exists
    assert http.put("/recordings/r1/rename/r2").status_code == 200
    assert http.get("/recordings/r1").status_code == 404
    info = http.get("/recordings/r2").json()
    assert info["name"] == "r2" and info["streams"]["cam"]["count"] == 5
    assert http.get("/recordings/static/r2/info.json").json()["streams"]["cam"]["count"] == 5
    assert http.get("/recordings/static/r2/nothing.mcap").status_code == 404

    for bad in ["../etc", "a/b", "..", ".hidden", "current"]:
        assert http.put("/recordings/start", params={"rec_id": bad}).status_code == 400, bad
    # a `/` (even encoded) cannot be inside a recording id or file name of a path: no route has it
    assert http.get("/recordings/a%2Fb").status_code == 404
    assert http.get("/recordings/static/r2/..%2F..%2Fsecret").status_code == 404
    assert http.put("/recordings/r2/rename/..%2Fescaped").status_code == 404
    assert http.put("/recordings/r2/rename/x%2Fy").status_code == 404
    assert not (root_of(rec_server).parent / "escaped").exists()
    assert http.delete("/recordings/r2").json() == [True, True]
    assert http.get("/recordings/static/r2/info.json").status_code == 404
    assert not (root_of(rec_server) / "r2").exists()


@pytest.mark.slow
def test_upload_an_mcap_file_creates_a_recording_that_replays(rec_server, tmp_path):
    pushed = record_session(rec_server, "source", count=8)
    http = rec_server.http()
    merged = tmp_path / "session.mcap"
    files = sorted((root_of(rec_server) / "source").glob("*.mcap"))
    # one file written by the mcap package itself from what the recording holds
    from mcap.writer import Writer
    with open(merged, "wb") as f:
        writer = Writer(f)
        writer.start()
        channels = {}
        for m in read_messages(files):
            if m.sid not in channels:
                channels[m.sid] = writer.register_channel(m.sid, "application/octet-stream", 0)
            ms, seq = (int(x) for x in m.entry_id.split("-"))
            writer.add_message(channels[m.sid], log_time=m.log_time, data=m.data, publish_time=m.log_time,
                               sequence=seq)
        writer.finish()
    with open(merged, "rb") as f:
        reply = http.post("/recordings/upload/uploaded/session.mcap", files={"file": f})
    assert reply.status_code == 200, reply.text
    info = http.get("/recordings/uploaded").json()
    assert {sid: s["count"] for sid, s in info["streams"].items()} == {sid: len(v) for sid, v in pushed.items()}
    assert recorded(root_of(rec_server), "uploaded") == pushed
    bad = http.post("/recordings/upload/broken/x.mcap", files={"file": io.BytesIO(b"not an mcap file")})
    assert bad.status_code == 400 and "MCAP" in bad.json()["detail"]
    assert "broken" not in http.get("/recordings").json()


@pytest.mark.slow
def test_replay_a_local_file_at_recorded_speed_through_push(rec_server, tmp_path):
    from ptgstore.client import Client
    pushed = record_session(rec_server, "local", count=30, hz=20)  # 1.5 s
    with Client(rec_server.url, token=rec_server.token()) as client:
        paths = client.download_recording("local", str(tmp_path))
        assert sorted(os.path.basename(p) for p in paths) == sorted(client.recording("local")["files"] + ["info.json"])
        started_ms = int(time.time() * 1000)
        sent = client.replay_file(str(tmp_path / "local"), streams=["cam", "imu"], prefix="local:", speed=1.0)
    assert sent == {"cam": 30, "imu": 30}
    http = rec_server.http()
    for sid in ("cam", "imu"):
        replayed = read_stream(http, f"local:{sid}")
        assert [d for _, d in replayed] == [d for _, d in pushed[sid]]
        assert_never_early(pushed[sid], replayed, started_ms)


@pytest.mark.slow
def test_cli_record_download_replay_mv_rm(rec_server, tmp_path, capsys):
    from ptgstore.cli import main
    conn = ["--url", rec_server.url, "--token", rec_server.token()]
    assert main(["record", "start", "cli-session", "--streams", "cam+imu", *conn]) == 0
    assert capsys.readouterr().out.strip() == "cli-session"
    pushed = push_at(rec_server, payloads(), hz=30, count=10)
    assert main(["record", "stop", *conn]) == 0
    assert main(["record", "stop", *conn]) == 1
    assert main(["record", "ls", "--info", *conn]) == 0
    assert "cli-session: 2 streams, 20 entries" in capsys.readouterr().out
    assert main(["record", "download", "cli-session", "--out", str(tmp_path), *conn]) == 0
    files = sorted((tmp_path / "cli-session").glob("*.mcap"))
    assert [(m.sid, m.entry_id, m.data) for m in read_messages(files)] == sorted(
        [("cam", i, d) for i, d in pushed["cam"]] + [("imu", i, d) for i, d in pushed["imu"]],
        key=lambda x: (int(x[1].split("-")[0]), int(x[1].split("-")[1])))
    assert main(["replay", str(files[0]), "--prefix", "again:", "--speed", "max", *conn]) == 0
    assert main(["replay", "cli-session", "--streams", "imu", "--prefix", "srv:", "--speed", "max", "--keep-ids",
                 *conn]) == 0
    http = rec_server.http()
    assert read_stream(http, "srv:imu") == pushed["imu"]  # recorded ids kept
    assert len(read_stream(http, "again:cam")) > 0
    assert main(["record", "mv", "cli-session", "renamed", *conn]) == 0
    assert main(["record", "rm", "renamed", *conn]) == 0
    assert main(["record", "info", "renamed", *conn]) == 1
    assert "no recording" in capsys.readouterr().err


@pytest.mark.usefixtures("redis_7")
@pytest.mark.slow
def test_gap_when_entries_are_trimmed_before_they_are_written(rec_server):
    http = rec_server.http()
    http.put("/streams/tiny", json={"max_len": 5})
    http.put("/recordings/start", params={"rec_id": "gappy", "sid": "tiny"})
    first = push_at(rec_server, {"tiny": lambda i: b"first %d" % i}, hz=100, count=3)["tiny"]
    # committed within a segment (1 s here): the recorder has read them
    wait_until(lambda: http.get("/recordings/gappy").json()["streams"].get("tiny", {}).get("count") == 3,
               what="the first entries written")
    # one batch of 300 entries: stored and trimmed by one script, before the recorder can read them
    parts = [("file", (f"e{i}", b"bulk %d" % i)) for i in range(300)]
    ids = http.post("/data/tiny", files=parts).json()
    http.put("/recordings/stop")
    info = http.get("/recordings/gappy").json()
    got = recorded(root_of(rec_server), "gappy")["tiny"]
    assert got[:3] == first and info["gaps"] == 1 and info["streams"]["tiny"]["gaps"] == 1
    gap = info["gap_list"][0]
    assert gap["after"] == first[-1][0] and gap["next"] == got[3][0] and gap["next"] in ids
    assert gap["lost"] == ids.index(gap["next"]) == info["lost"]  # exactly the entries trimmed unread
    assert [i for i, _ in got[3:]] == ids[ids.index(gap["next"]):]  # the rest as kept, in order


def serve_env(redis_server) -> dict:
    return {"PTGSTORE_REDIS_URL": redis_server.url, "PTGSTORE_RECORDING_SEGMENT_SECONDS": "1"}


def api(process) -> httpx.Client:
    return httpx.Client(base_url=process.url, headers={"Authorization": f"Bearer {process.token()}"}, timeout=90)


def joined(*pushes) -> dict[str, list]:
    out: dict[str, list] = {}
    for pushed in pushes:
        for sid, entries in pushed.items():
            out.setdefault(sid, []).extend(entries)
    return out


@pytest.mark.slow
def test_sigkill_mid_recording_then_restart_resumes_exactly_once(tmp_path, rdb, redis_server):
    data = tmp_path / "data"
    rec_dir = data / "recordings" / "crash"
    with ServeProcess(data, env=serve_env(redis_server)) as first:
        first.wait_ready()
        assert api(first).put("/recordings/start", params={"rec_id": "crash"}).json() == "crash"
        before = push_at(first, payloads(), hz=30, count=45)
        wait_until(lambda: list(rec_dir.glob("part-*.mcap")), what="a committed segment")
        during = push_at(first, payloads(), hz=30, count=6)
        wait_until(lambda: list(rec_dir.glob("*.tmp")), what="a segment being written")
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
    finished = sorted(rec_dir.glob("part-*.mcap"))
    assert finished and list(rec_dir.glob("*.tmp"))
    for path in finished:  # written before the crash: complete, indexed files
        with open(path, "rb") as f:
            assert make_reader(f).get_summary().statistics.message_count > 0
    with ServeProcess(data, env=serve_env(redis_server)) as second:
        second.wait_ready()
        http = api(second)
        assert http.get("/recordings/current").json() == "crash"
        after = push_at(second, payloads(), hz=30, count=10)
        assert http.put("/recordings/stop").json() == 1
        assert http.get("/recordings/current").json() is None
        assert http.get("/recordings/crash").json()["gaps"] == 0
    assert recorded(data / "recordings", "crash") == joined(before, during, after)
    assert not list(rec_dir.glob("*.tmp"))


@pytest.mark.slow
def test_a_full_disk_stops_the_recording_visibly_never_the_store(tmp_path, rdb, redis_server):
    """The server's files may not grow past 2 MiB (RLIMIT_FSIZE, as a full disk would refuse)."""
    import resource
    data = tmp_path / "data"
    big = {"cam": lambda i: JPEG + random.Random(i).randbytes(100 * 1024)}  # does not compress
    with ServeProcess(data, env=serve_env(redis_server)) as server:
        server.wait_ready()
        resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, (2 * 1024 * 1024, 2 * 1024 * 1024))
        http = api(server)
        http.put("/recordings/start", params={"rec_id": "too-big"})
        push_at(server, big, hz=30, count=40)  # 4 MiB in one segment
        wait_until(lambda: http.get("/recordings/current").json() is None, timeout=30,
                   what=f"the recording to stop: {server.output[-3000:]}")
        info = http.get("/recordings/too-big").json()
        assert "recording stopped" in info["error"] and "File too large" in info["error"]
        assert "recording too-big: recording stopped" in server.output
        after = push_at(server, {"cam": lambda i: b"still stored %d" % i}, hz=100, count=5)  # the store goes on
        assert read_stream(http, "cam")[-5:] == after["cam"]
        assert http.put("/recordings/start", params={"rec_id": "next"}).json() == "next"
        assert http.put("/recordings/stop").json() == 1


@pytest.mark.slow
def test_server_replay_at_recorded_speed_is_never_early(rec_server):
    pushed = record_session(rec_server, "paced", count=20, hz=20)  # about 1 s
    opened_ms = int(time.time() * 1000)
    reports, code = run_replay(rec_server, rec_id="paced", sid="cam", prefix="p:", interval="0.2")
    assert code == 1000 and len(reports) >= 3  # progress while it ran, then the last report
    replayed = read_stream(rec_server.http(), "p:cam")
    assert [d for _, d in replayed] == [d for _, d in pushed["cam"]]
    assert_never_early(pushed["cam"], replayed, opened_ms)


def assert_never_early(recorded: list, replayed: list, started_ms: int) -> None:
    """Each replayed entry arrived no sooner after the replay started than it was recorded after
    the first one (entry ids are the server's arrival times; one machine, one clock)."""
    first = int(recorded[0][0].split("-")[0])
    for (r, _), (p, _) in zip(replayed, recorded):
        assert int(r.split("-")[0]) - started_ms >= int(p.split("-")[0]) - first - 1, (r, p)


@pytest.mark.slow
def test_a_graceful_stop_finishes_the_segment_and_a_restart_goes_on(tmp_path, rdb, redis_server):
    settings = make_settings(tmp_path, redis_server.url, recording_segment_seconds=60)
    with live_server(settings) as first:
        first.http().put("/recordings/start", params={"rec_id": "shift"})
        before = push_at(first, payloads(), hz=30, count=15)
        wait_until(lambda: list((root_of(first) / "shift").glob("*.tmp")), what="a segment being written")
    rec_dir = Path(settings.data_dir) / "recordings" / "shift"
    shards = [parse_segment_name(p.name)[0] for p in rec_dir.glob("*.mcap")]
    assert not list(rec_dir.glob("*.tmp")) and shards and len(shards) == len(set(shards))  # each finished at shutdown
    with live_server(settings) as second:
        after = push_at(second, payloads(), hz=30, count=15)
        assert second.http().put("/recordings/stop").json() == 1
    assert recorded(rec_dir.parent, "shift") == joined(before, after)


@pytest.mark.slow
def test_resume_keeps_a_committed_segment_left_unrenamed_and_drops_uncommitted_files(tmp_path, rdb, redis_server):
    """The files a crash leaves between the steps of finishing a segment (fsync, commit in Redis,
    rename): a committed temporary file is kept, an uncommitted one or a renamed uncommitted one
    is dropped (its entries are written again from Redis)."""
    settings = make_settings(tmp_path, redis_server.url, recording_segment_seconds=60)
    rec_dir = Path(settings.data_dir) / "recordings" / "steps"
    with live_server(settings) as first:
        first.http().put("/recordings/start", params={"rec_id": "steps"})
        before = push_at(first, payloads(), hz=30, count=10)
        wait_until(lambda: list(rec_dir.glob("*.tmp")), what="a segment being written")
    shard = parse_segment_name(min(rec_dir.glob("*.mcap")).name)[0]
    others = sorted(p.name for p in rec_dir.glob("*.mcap") if parse_segment_name(p.name)[0] != shard)
    token = rdb.hget("ptgstore:recording:segments", f"{shard}:1").decode()
    os.replace(rec_dir / segment_name(shard, 1), rec_dir / f"part-{shard:02d}-000001.{token}.tmp")  # committed, not renamed
    (rec_dir / f"part-{shard:02d}-000002.othertoken.tmp").write_bytes(b"half a segment")  # never committed
    (rec_dir / segment_name(shard, 2)).write_bytes(b"renamed, never committed")
    with live_server(settings) as second:
        after = push_at(second, payloads(), hz=30, count=10)
        assert second.http().put("/recordings/stop").json() == 1
    names = sorted(p.name for p in rec_dir.iterdir() if not p.name.startswith("."))
    assert names == sorted(["info.json", segment_name(shard, 1), segment_name(shard, 2), *others,
                            *(n.replace("-000001.", "-000002.") for n in others)])
    assert recorded(rec_dir.parent, "steps") == joined(before, after)


def test_a_key_that_is_not_a_stream_cannot_be_recorded(rec_server, rdb):
    rdb.set("plain-string", b"x")
    http = rec_server.http()
    reply = http.put("/recordings/start", params={"rec_id": "wrong", "sid": "plain-string"})
    assert reply.status_code == 400 and "not a stream" in reply.json()["detail"]
    assert http.get("/recordings/current").json() is None  # nothing half-started
    assert http.put("/recordings/start", params={"rec_id": "right", "sid": "cam"}).json() == "right"
    assert http.put("/recordings/stop").json() == 1


@pytest.mark.slow
def test_the_recording_benchmark_runs_and_checks_every_entry():
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "benchmarks.recording", "--headsets", "1", "--seconds", "1",
                          "--runs", "1"], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "every acknowledged entry recorded once, byte-exact, in id order" in run.stdout
    assert any(line.startswith("| median |") for line in run.stdout.splitlines())
