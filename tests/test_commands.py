"""The client commands end to end: `python -m ptgstore ...` processes against a live server."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from conftest import RedisServer, live_server, make_settings, wait_until

STREAMS = ["glf/left", "hololens1:imu", ".hidden", "plain"]


def ptgstore(server, *args, token=True, stdin: bytes | None = None, env_extra=None):
    """Run a command with URL and token from the environment, as a shell user would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTGSTORE_")}
    env["PTGSTORE_URL"] = server.url
    if token:
        env["PTGSTORE_TOKEN"] = server.token()
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "ptgstore", *args], input=stdin, capture_output=True,
                          env=env, timeout=120)


def ok(done) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr.decode()
    return done


def stored(rdb, sid):
    return [(i.decode(), f[b"d"]) for i, f in rdb.xrange(sid)]


def test_push_streams_and_pull(server, rdb, tmp_path):
    frames = [os.urandom(n) for n in (10, 0, 300_000)]
    paths = []
    for i, data in enumerate(frames):
        paths.append(tmp_path / f"f{i}.jpg")
        paths[-1].write_bytes(data)
    pushed = ok(ptgstore(server, "push", "glf/left", *map(str, paths), "--ids"))
    ids = pushed.stdout.decode().split()
    assert stored(rdb, "glf/left") == list(zip(ids, frames))
    assert "pushed 3 entries" in pushed.stderr.decode()
    ok(ptgstore(server, "push", "imu", stdin=b"from stdin"))
    assert stored(rdb, "imu")[0][1] == b"from stdin"

    assert ok(ptgstore(server, "streams")).stdout.decode().split() == ["glf/left", "imu"]
    table = ok(ptgstore(server, "streams", "--info")).stdout.decode().splitlines()
    assert table[0].split()[:2] == ["stream", "entries"]
    assert table[1].split()[:4] == ["glf/left", "3", ids[0], ids[2]]

    out = tmp_path / "pulled"
    pulled = ok(ptgstore(server, "pull", "glf/left+imu", "--from", "0", "--count", "4", "--out", str(out)))
    assert "pulled 4 entries" in pulled.stderr.decode()
    assert sorted(p.name for p in (out / "glf%2Fleft").iterdir()) == sorted(f"{i}.bin" for i in ids)
    for entry_id, data in zip(ids, frames):
        assert (out / "glf%2Fleft" / f"{entry_id}.bin").read_bytes() == data
    assert [p.read_bytes() for p in (out / "imu").iterdir()] == [b"from stdin"]

    raw = ok(ptgstore(server, "pull", "glf/left", "--from", ids[0], "--timeout", "0.5"))
    assert raw.stdout == frames[1] + frames[2]
    by_flags = ok(subprocess.run([sys.executable, "-m", "ptgstore", "pull", "imu", "--from", "*", "--count", "1",
                                  "--url", server.url, "--username", "test", "--password", "test"],
                                 capture_output=True, timeout=60))
    assert by_flags.stdout == b"from stdin"


def test_following_pull_stopped_by_ctrl_c_reports_what_it_pulled(server, rdb, tmp_path):
    out = tmp_path / "live"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTGSTORE_")}
    env.update(PTGSTORE_URL=server.url, PTGSTORE_TOKEN=server.token())
    follow = subprocess.Popen([sys.executable, "-m", "ptgstore", "pull", "cam", "--out", str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: "cam" in server.app.state.hub.followers, timeout=30, what="the pull socket")
        ids = [rdb.xadd("cam", {"d": b"live %d" % i}).decode() for i in range(2)]
        wait_until(lambda: out.exists() and len(list((out / "cam").glob("*.bin"))) == 2, what="two files")
        follow.send_signal(signal.SIGINT)
        _, stderr = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait(10)
    assert follow.returncode == 130
    assert "pulled 2 entries" in stderr.decode()
    assert [(out / "cam" / f"{i}.bin").read_bytes() for i in ids] == [b"live 0", b"live 1"]


def test_missing_token_says_how_to_get_one(server):
    done = ptgstore(server, "streams", token=False)
    assert done.returncode == 1
    assert b"PTGSTORE_TOKEN" in done.stderr and b"ptgstore token" in done.stderr
    assert b"token=," not in done.stderr, "the Python hint is not the command's"
    refused = ptgstore(server, "pull", "cam", "--from", "12-x", "--count", "1")
    assert refused.returncode == 2 and b"--from" in refused.stderr
    missing = ptgstore(server, "push", "cam", "no-such-file.jpg")
    assert missing.returncode == 2 and missing.stderr == b"ptgstore: not a file: no-such-file.jpg\n"


def test_dump_then_load_into_a_fresh_store_is_byte_exact(server, rdb, tmp_path):
    expected = {}
    with server.http() as http:
        assert http.put("/streams/glf/left", json={"camera": "left", "max_len": 5000}).status_code == 200
        assert http.put("/streams/declared-only", json={"fps": 30}).status_code == 200
    for n, sid in enumerate(STREAMS):
        for i in range(40 + n):
            rdb.xadd(sid, {"d": os.urandom(i * 37 % 5000)})
        expected[sid] = stored(rdb, sid)
    backup = tmp_path / "backup"
    dumped = ok(ptgstore(server, "dump", str(backup), "--page", "7"))
    assert f"dumped {len(STREAMS) + 1} streams, {sum(map(len, expected.values()))} entries" in dumped.stderr.decode()
    assert sorted(p.name for p in backup.iterdir()) == sorted(["glf%2Fleft", "hololens1%3Aimu", "%2Ehidden", "plain",
                                                               "declared-only"])
    meta = orjson.loads((backup / "glf%2Fleft" / "meta.json").read_bytes())
    assert meta["sid"] == "glf/left" and meta["meta"] == {"camera": "left", "max_len": 5000}
    assert (backup / "plain" / f"{expected['plain'][3][0]}.bin").read_bytes() == expected["plain"][3][1]
    assert ptgstore(server, "dump", str(backup)).returncode == 1, "a dump never mixes into an older one"

    fresh_redis = RedisServer(tmp_path / "fresh-redis").start()
    try:
        with live_server(make_settings(tmp_path / "fresh", fresh_redis.url)) as fresh:
            loaded = ok(ptgstore(fresh, "load", str(backup)))
            assert f"loaded {len(STREAMS) + 1} streams" in loaded.stderr.decode()
            copy = fresh_redis.client()
            for sid in STREAMS:
                assert stored(copy, sid) == expected[sid], sid
            with fresh.http() as http:
                assert http.get("/streams").json() == sorted(STREAMS + ["declared-only"])
                assert http.get("/streams/declared-only").json()["meta"] == {"fps": 30}
                assert http.get("/streams/glf/left").json()["meta"] == {"camera": "left", "max_len": 5000}

            again = ptgstore(fresh, "load", str(backup), "plain")
            assert again.returncode == 1 and b"1007" in again.stderr, "ids older than the stream's are refused"
            ok(ptgstore(fresh, "load", str(backup), "plain", "--replace"))
            assert stored(copy, "plain") == expected["plain"]
            ok(ptgstore(fresh, "load", str(backup), "plain", "--new-ids"))
            copied = stored(copy, "plain")
            assert [d for _, d in copied] == [d for _, d in expected["plain"]] * 2
            assert len({i for i, _ in copied}) == 2 * len(expected["plain"])
            copy.close()
    finally:
        fresh_redis.stop()


def test_simulate_pushes_headset_streams_at_their_rates(server, rdb):
    done = ok(ptgstore(server, "simulate", "--duration", "2", "--device", "hl2", "--imu-batch", "20"))
    summary = done.stderr.decode()
    assert "simulated" in summary and "hl2:main" in summary
    camera, depth, imu = stored(rdb, "hl2:main"), stored(rdb, "hl2:depthlt"), stored(rdb, "hl2:imu")
    # 2 s at 30, 5 and 200/20 Hz; a loaded test machine may fall behind, never ahead
    assert 30 <= len(camera) <= 61 and 5 <= len(depth) <= 11 and 10 <= len(imu) <= 21
    for _, frame in camera:
        assert 40 * 1024 <= len(frame) <= 120 * 1024
        assert frame[:2] == b"\xff\xd8" and frame[-2:] == b"\xff\xd9"
    assert {len(frame) for _, frame in depth} == {320 * 288 * 2}
    assert depth[0][1] != depth[1][1]
    assert {len(packet) for _, packet in imu} == {20 * 32}
    assert f"hl2:main: {len(camera)} entries" in summary


@pytest.mark.parametrize("sid,dirname", [("glf/left", "glf%2Fleft"), ("a:b", "a%3Ab"), ("..", "%2E."),
                                         ("sp ace%", "sp%20ace%25")])
def test_stream_directory_names_are_safe(sid, dirname):
    from ptgstore.commands import stream_dirname

    assert stream_dirname(sid) == dirname
    assert "/" not in stream_dirname(sid) and stream_dirname(sid) not in (".", "..")
