"""Recordings of a deployment of several processes: one recordings directory, proven by every
process; the streams shared out among them; a directory that is not the deployment's refused
clearly (another process's local disk, a directory of another Redis, an ephemeral disk)."""
from __future__ import annotations

import logging
import signal
import stat

import httpx
import pytest

from ptgstore.testing import RedisServer, wait_until
from support.servers import ServeProcess, live_server, make_settings
from test_recordings import api, joined, push_at, read_stream, recorded, run_replay, serve_env
from ptgstore.auth import hash_password, write_users
from ptgstore.keys import Keys
from ptgstore.recordings.directory import MARKER_FILE

pytestmark = pytest.mark.slow  # several `ptgstore serve` processes sharing one recordings directory

SECRET = "one signing secret shared by every process of the test!"


def shared_env(redis_server, recordings_dir) -> dict:
    env = {**serve_env(redis_server), "PTGSTORE_SECRET": SECRET, "PTGSTORE_RECORDING_SHARDS": "4"}
    if recordings_dir is not None:
        env["PTGSTORE_RECORDINGS_DIR"] = str(recordings_dir)
    return env


def recorders_present(process) -> int:
    return api(process).get("/status").json()["recordings"]["recorders_present"]


def shards_held(process) -> list[int]:
    return api(process).get("/status").json()["recordings"]["shards_held"]


def download(process, rec_id: str) -> dict[str, bytes]:
    """Every file of a recording, as the routes serve them."""
    http = api(process)
    files = http.get(f"/recordings/{rec_id}").json()["files"]
    out = {}
    for name in files:
        reply = http.get(f"/recordings/static/{rec_id}/{name}")
        assert reply.status_code == 200
        assert reply.headers["content-disposition"].endswith(f'"{rec_id}-{name}"')  # named after the recording
        out[name] = reply.content
    return out


def test_two_api_processes_share_the_shards_and_one_takes_over_from_a_killed_one(tmp_path, rdb, redis_server):
    data = tmp_path / "data"
    sids = spread_streams(4)
    streams = {sid: (lambda sid: lambda i: b"%s %d" % (sid.encode(), i))(sid) for sid in sids}
    with ServeProcess(data, env=serve_env(redis_server)) as a, ServeProcess(data, env=serve_env(redis_server)) as b:
        a.wait_ready()
        b.wait_ready()
        wait_until(lambda: recorders_present(a) == 2 and recorders_present(b) == 2, what="both able to record")
        api(a).put("/recordings/start", params={"rec_id": "shared"})
        # the fair share of each of two processes: 2 of the 4 shards
        wait_until(lambda: len(shards_held(a)) == len(shards_held(b)) == 2, what="both processes writing")
        first = joined(push_at(a, dict(list(streams.items())[:2]), hz=30, count=20),
                       push_at(b, dict(list(streams.items())[2:]), hz=30, count=20))
        wait_until(lambda: len(api(a).get("/recordings/shared").json()["writers"]) == 2, timeout=30,
                   what="segments committed by both processes")
        b.process.send_signal(signal.SIGKILL)
        b.process.wait(10)
        second = push_at(a, streams, hz=30, count=20)
        wait_until(lambda: shards_held(a) == [0, 1, 2, 3], timeout=30, what="the killed process's shards taken over")
        assert api(a).put("/recordings/stop").json() == 1
        info = api(a).get("/recordings/shared").json()
    assert recorded(data / "recordings", "shared") == joined(first, second)  # nothing lost, nothing twice
    assert sorted(w["pid"] for w in info["writers"]) == sorted([a.process.pid, b.process.pid])


def spread_streams(shards: int) -> list[str]:
    """Stream ids whose shards (of `shards`) are all different: every shard has one."""
    from ptgstore.keys import Keys
    from ptgstore.recordings.recorder import shard_of
    found: dict[int, str] = {}
    for i in range(1000):
        found.setdefault(shard_of(f"s{i}", shards, Keys()), f"s{i}")
        if len(found) == shards:
            return [found[k] for k in sorted(found)]
    raise AssertionError("no spread of stream ids found")


def test_two_servers_with_their_own_data_and_one_recordings_directory_make_one_recording(tmp_path, rdb, redis_server):
    """Started through one, stopped through the other: listed, downloaded and replayed the same
    through both, every entry once, written by both; an idle stream recorded as 0 entries, and no
    error in either log."""
    shared = tmp_path / "shared-recordings"
    env = shared_env(redis_server, shared)
    sids = spread_streams(4)
    streams = {sid: (lambda sid: lambda i: b"%s entry %d" % (sid.encode(), i))(sid) for sid in sids}
    with ServeProcess(tmp_path / "data-a", env=env) as a, ServeProcess(tmp_path / "data-b", env=env) as b:
        a.wait_ready()
        b.wait_ready()
        wait_until(lambda: recorders_present(a) == 2 and recorders_present(b) == 2, what="both able to record")
        assert api(a).put("/streams/idle", json={"note": "gets nothing"}).status_code == 200
        assert api(a).put("/recordings/start", params={"rec_id": "together"}).json() == "together"
        pushed = push_at(a, dict(list(streams.items())[:2]), hz=30, count=40)
        pushed.update(push_at(b, dict(list(streams.items())[2:]), hz=30, count=40))
        assert api(b).put("/recordings/stop").json() == 1
        assert api(a).get("/recordings/current").json() is None

        listings = [api(p).get("/recordings", params={"info": "true"}).json() for p in (a, b)]
        assert listings[0] == listings[1] and [i["name"] for i in listings[0]] == ["together"]
        info = listings[0][0]
        assert {sid: s["count"] for sid, s in info["streams"].items()} == {
            **{sid: 40 for sid in sids}, "idle": 0}
        assert sorted(w["pid"] for w in info["writers"]) == sorted([a.process.pid, b.process.pid])
        files = download(a, "together")
        assert files == download(b, "together") and len(files) >= 4
        for name, body in files.items():
            assert body == (shared / "together" / name).read_bytes()

        for process, prefix in ((a, "ra:"), (b, "rb:")):
            reports, code = run_replay(process, rec_id="together", prefix=prefix, fullspeed="true", interval="0.05")
            assert code == 1000 and sum(sum(r["updates"].values()) for r in reports) == 40 * len(sids)
        for sid in sids:
            replayed = [read_stream(api(a), f"{prefix}{sid}") for prefix in ("ra:", "rb:")]
            assert [d for _, d in replayed[0]] == [d for _, d in replayed[1]] == [d for _, d in pushed[sid]]
    assert recorded(shared, "together") == pushed  # every entry once, byte-exact, in id order
    for process in (a, b):
        assert "ERROR" not in process.output and "Traceback" not in process.output, process.output[-3000:]
        assert "recording together finished" in a.output + b.output


def test_a_process_with_its_own_recordings_directory_is_refused_clearly(tmp_path, rdb, redis_server):
    with ServeProcess(tmp_path / "data-a", env=shared_env(redis_server, None)) as a:
        a.wait_ready()
        with ServeProcess(tmp_path / "data-b", env=shared_env(redis_server, None)) as b:
            b.wait_ready()
            reply = api(b).put("/recordings/start", params={"rec_id": "split"})
            assert reply.status_code == 409
            detail = reply.json()["detail"]
            assert "is not the recordings directory the other processes on this Redis use" in detail
            assert str(tmp_path) not in detail  # no file path for token holders: the log has them
            assert api(b).get("/recordings").status_code == 409  # never a silent part of the recordings
            status = api(b).get("/status").json()["recordings"]
            assert status["ok"] is False and "same directory" in status["problem"]
            wait_until(lambda: "recordings refused on this process" in b.output, what="the reason in the log")
            assert f"the deployment's: {tmp_path / 'data-a' / 'recordings'} on " in b.output  # where the others are

            assert api(a).put("/recordings/start", params={"rec_id": "whole"}).json() == "whole"
            pushed = push_at(b, {"cam": lambda i: b"frame %d" % i}, hz=30, count=20)
            assert api(b).put("/recordings/stop").json() == 1  # the stop is Redis's: any process
            info = api(a).get("/recordings/whole").json()
            assert [w["pid"] for w in info["writers"]] == [a.process.pid]  # b wrote nothing
            assert recorded(tmp_path / "data-a" / "recordings", "whole")["cam"] == pushed["cam"]
            assert not list((tmp_path / "data-b" / "recordings").glob("*/*.mcap"))


def test_a_directory_used_with_another_redis_is_refused(tmp_path, rdb, redis_server):
    shared = tmp_path / "one-directory"
    with RedisServer(tmp_path / "other-redis") as other, \
            live_server(make_settings(tmp_path / "first", redis_server.url, recordings_dir=str(shared))) as first:
        assert first.http().put("/recordings/start", params={"rec_id": "mine"}).json() == "mine"
        assert first.http().put("/recordings/stop").json() == 1
        with live_server(make_settings(tmp_path / "second", other.url, recordings_dir=str(shared))) as second:
            reply = second.http().get("/recordings")
            assert reply.status_code == 409 and "belongs to a deployment on another Redis" in reply.json()["detail"]
            assert second.http().put("/recordings/start").status_code == 409
        assert first.http().get("/recordings").json() == ["mine"]


def test_an_ephemeral_disk_refuses_recordings_unless_a_recordings_directory_is_set(tmp_path, rdb, redis_server):
    users = tmp_path / "users.json"
    write_users(users, {"alice": hash_password("alice's long password")})
    common = {"ephemeral_disk": True, "secret": SECRET, "auth": "users", "users_file": str(users),
              "allowed_hosts": ("127.0.0.1",)}
    for recordings_dir, refused in ((None, True), (str(tmp_path / "persistent"), False)):
        settings = make_settings(tmp_path / ("default" if refused else "set"), redis_server.url,
                                 recording_segment_seconds=1, **common)
        if recordings_dir:
            settings = settings.replace(recordings_dir=recordings_dir)
        with live_server(settings) as server, server.http(user="alice") as http:
            reply = http.put("/recordings/start", params={"rec_id": "kept"})
            if refused:
                assert reply.status_code == 409
                assert "PTGSTORE_RECORDINGS_DIR" in reply.json()["detail"] and "lost" in reply.json()["detail"]
                assert http.get("/status").json()["recordings"]["ok"] is False
            else:
                assert reply.json() == "kept" and http.put("/recordings/stop").json() == 1
        rdb.flushall()


def test_the_marker_is_private_and_out_of_reach_of_token_holders(tmp_path, rdb, redis_server):
    """Another local account cannot read or replace the marker (0600 in a 0700 directory); a token
    holder cannot name it (names starting with '.' are refused), so cannot fetch, upload or rename
    it; a web page gets nothing without a token."""
    with live_server(make_settings(tmp_path, redis_server.url)) as server, server.http() as http:
        root = server.app.state.recorder.root
        marker = root / MARKER_FILE
        assert stat.S_IMODE(marker.stat().st_mode) == 0o600 and stat.S_IMODE(root.stat().st_mode) == 0o700
        assert http.put("/recordings/start", params={"rec_id": MARKER_FILE}).status_code == 400
        assert http.get(f"/recordings/static/x/{MARKER_FILE}").status_code == 400
        assert http.post(f"/recordings/upload/x/{MARKER_FILE}", files={"file": b"x"}).status_code == 400
        assert http.put(f"/recordings/{MARKER_FILE}/rename/y").status_code == 400
        assert httpx.get(f"{server.url}/status").status_code == 401
        before = marker.read_bytes()
        assert http.put("/recordings/start", params={"rec_id": "r"}).json() == "r"
        assert http.put("/recordings/stop").json() == 1
        assert marker.read_bytes() == before


def test_a_stop_with_streams_that_got_nothing_finishes_without_an_error(tmp_path, rdb, redis_server, ptgstore_logs):
    caplog = ptgstore_logs
    settings = make_settings(tmp_path, redis_server.url, recording_segment_seconds=1)
    with caplog.at_level(logging.INFO, logger="ptgstore"), live_server(settings) as server, server.http() as http:
        http.put("/streams/quiet", json={})
        http.put("/recordings/start", params={"rec_id": "half-quiet", "sid": "quiet+busy"})
        push_at(server, {"busy": lambda i: b"busy %d" % i}, hz=30, count=5)
        assert http.put("/recordings/stop").json() == 1
        info = http.get("/recordings/half-quiet").json()
        assert info["streams"]["quiet"]["count"] == 0 and info["streams"]["busy"]["count"] == 5
        assert http.put("/recordings/start", params={"rec_id": "all-quiet", "sid": "quiet"}).json() == "all-quiet"
        assert http.put("/recordings/stop").json() == 1
        quiet = http.get("/recordings/all-quiet").json()
        assert list(quiet["streams"]) == ["quiet"] and quiet["streams"]["quiet"]["count"] == 0
        assert quiet["files"] == [] and quiet["duration_secs"] is None
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("recording half-quiet finished: 5 entries") for m in messages)
    assert any(m.startswith("recording all-quiet finished: 0 entries") for m in messages)


def test_the_recordings_keys_keep_their_names_behind_the_prefix_and_the_cluster_tag():
    """The recordings' state is found where every earlier version (and the original server's
    `recording:id`) put it: on a single Redis behind the prefix, on a cluster under one hash tag."""
    plain, tagged = Keys("p:").recordings, Keys("p:", tagged=True).recordings
    names = {"id": "recording:id", "state": "ptgstore:recording", "cursors": "ptgstore:recording:cursors",
             "stats": "ptgstore:recording:stats", "segments": "ptgstore:recording:segments",
             "gaps": "ptgstore:recording:gaps", "writers": "ptgstore:recording:writers",
             "errors": "ptgstore:recording:errors", "presence": "ptgstore:recorders",
             "directory": "ptgstore:recordings:directory"}
    for attribute, name in names.items():
        assert getattr(plain, attribute) == "p:" + name
        assert getattr(tagged, attribute) == "p:{ptgstore:recording}" + name
    assert plain.lease(3) == "p:ptgstore:recorder:lease:3"
    assert tagged.lease(3) == "p:{ptgstore:recording}ptgstore:recorder:lease:3"
    assert set(plain.owned()) == {getattr(plain, attribute) for attribute in names}
