"""The client commands end to end: `python -m ptgstore ...` processes against a live server."""
import io
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import time
from array import array
from pathlib import Path

import orjson
import pytest
from PIL import Image

from ptgstore.testing import RedisServer, free_port, wait_until
from support.servers import live_server, make_settings

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


@pytest.mark.slow
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


# starts a command as a shell without job control starts `cmd &`: SIGINT ignored, inherited through exec
SIGINT_IGNORED = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                  "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"]


@pytest.mark.parametrize("started", ["in the foreground", "with SIGINT ignored"])
@pytest.mark.slow
def test_following_pull_stopped_by_ctrl_c_reports_what_it_pulled(server, rdb, tmp_path, started):
    out = tmp_path / "live"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTGSTORE_")}
    env.update(PTGSTORE_URL=server.url, PTGSTORE_TOKEN=server.token())
    wrapper = SIGINT_IGNORED if started == "with SIGINT ignored" else [sys.executable]
    follow = subprocess.Popen([*wrapper, "-m", "ptgstore", "pull", "cam", "--out", str(out)], env=env,
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


@pytest.mark.slow
def test_missing_token_says_how_to_get_one(server):
    done = ptgstore(server, "streams", token=False)
    assert done.returncode == 1
    assert b"PTGSTORE_TOKEN" in done.stderr and b"ptgstore token" in done.stderr
    assert b"token=," not in done.stderr, "the Python hint is not the command's"
    refused = ptgstore(server, "pull", "cam", "--from", "12-x", "--count", "1")
    assert refused.returncode == 2 and b"--from" in refused.stderr
    missing = ptgstore(server, "push", "cam", "no-such-file.jpg")
    assert missing.returncode == 2 and missing.stderr == b"ptgstore push: not a file: no-such-file.jpg\n"


@pytest.mark.slow
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

            before = {sid: stored(copy, sid) for sid in STREAMS}
            copy.delete("glf/left")  # of two streams to load, only the second one exists
            again = ptgstore(fresh, "load", str(backup), "glf/left", "plain")
            assert again.returncode == 1
            assert b"'plain' already exists" in again.stderr and b"--replace" in again.stderr, again.stderr
            assert stored(copy, "glf/left") == [] and stored(copy, "plain") == before["plain"], \
                "nothing is written before the refusal"
            ok(ptgstore(fresh, "load", str(backup), "plain", "--replace"))
            assert stored(copy, "plain") == expected["plain"]
            ok(ptgstore(fresh, "load", str(backup), "plain", "--new-ids"))
            copied = stored(copy, "plain")
            assert [d for _, d in copied] == [d for _, d in expected["plain"]] * 2
            assert len({i for i, _ in copied}) == 2 * len(expected["plain"])
            copy.close()
    finally:
        fresh_redis.stop()


@pytest.mark.slow
def test_simulate_pushes_headset_streams_at_their_rates(server, rdb):
    done = ok(ptgstore(server, "simulate", "--duration", "2", "--device", "hl2", "--imu-batch", "20"))
    summary = done.stderr.decode()
    assert "simulated" in summary and "hl2:main" in summary
    camera, depth, imu = stored(rdb, "hl2:main"), stored(rdb, "hl2:depthlt"), stored(rdb, "hl2:imu")
    # 2 s at 30, 5 and 200/20 Hz; a loaded test machine may fall behind, never ahead
    assert 30 <= len(camera) <= 61 and 5 <= len(depth) <= 11 and 10 <= len(imu) <= 21
    comments = set()
    for n, (_, frame) in enumerate(camera):
        with Image.open(io.BytesIO(frame)) as image:
            assert (image.format, image.size, image.mode) == ("JPEG", (640, 360), "RGB")
            image.load()  # decodes every scan: a truncated or corrupt frame raises here
            comments.add(image.info["comment"])
        assert 30 * 1024 <= len(frame) <= 120 * 1024
    assert comments == {f"ptgstore simulate hl2 frame {n}".encode() for n in range(len(camera))}
    for _, frame in depth:
        image = array("H", frame)  # documented: little-endian uint16 millimetres, row-major 320x288
        assert len(image) == 320 * 288
        assert image[0] == 0 and 500 <= image[144 * 320 + 5] <= 5000 and max(image) <= 5000
    assert depth[0][1] != depth[1][1]
    assert {len(packet) for _, packet in imu} == {20 * 32}
    sample = struct.unpack("<d6f", imu[0][1][:32])
    assert abs(sample[0] - time.time()) < 60 and 9 < sample[2] < 10.5  # capture time, gravity on y
    assert f"hl2:main: {len(camera)} entries" in summary


@pytest.mark.parametrize("sid,dirname", [("glf/left", "glf%2Fleft"), ("a:b", "a%3Ab"), ("..", "%2E."),
                                         ("sp ace%", "sp%20ace%25")])
def test_stream_directory_names_are_safe(sid, dirname):
    from ptgstore.commands import stream_dirname

    assert stream_dirname(sid) == dirname
    assert "/" not in stream_dirname(sid) and stream_dirname(sid) not in (".", "..")


# -- first run: what a new user trips over ---------------------------------------------------------

@pytest.mark.slow
def test_pull_from_newest_with_limit_one_prints_the_newest_entry(server, rdb):
    payloads = [b"entry %d" % i for i in range(150)]
    for data in payloads:
        rdb.xadd("cam", {"d": data})
    assert ok(ptgstore(server, "pull", "cam", "--from", "*", "--limit", "1")).stdout == payloads[-1]
    assert ok(ptgstore(server, "pull", "cam", "--from", "*", "--limit", "3")).stdout == b"".join(payloads[-3:])
    # `*` is the newest --batch entries (at most --limit); --history then stops instead of waiting
    assert ok(ptgstore(server, "pull", "cam", "--from", "*", "--batch", "2", "--history")).stdout == \
        b"".join(payloads[-2:])
    old = ok(ptgstore(server, "pull", "cam", "--from", "*", "--count", "1"))
    assert old.stdout == payloads[-1] and b"--count is deprecated, use --limit" in old.stderr
    usage = ok(ptgstore(server, "pull", "--help")).stdout.decode()
    assert "--limit N" in usage and "--batch N" in usage and "--count" not in usage


@pytest.mark.slow
def test_history_pull_stops_when_caught_up_and_warns_of_missing_streams(server, rdb, tmp_path):
    ids = [rdb.xadd("cam", {"d": b"frame %d" % i}).decode() for i in range(3)]
    out = tmp_path / "frames"
    done = ok(ptgstore(server, "pull", "cam+depth", "--history", "--limit", "100", "--out", str(out)))
    assert sorted(p.name for p in (out / "cam").iterdir()) == sorted(f"{i}.bin" for i in ids)
    assert not (out / "depth").exists()
    assert "stream 'depth' does not exist; nothing to read" in done.stderr.decode()
    assert "pulled 3 entries" in done.stderr.decode()
    newest = ok(ptgstore(server, "pull", "cam", "--history", "--from", ids[0], "--out", str(tmp_path / "rest")))
    assert sorted(p.name for p in (tmp_path / "rest" / "cam").iterdir()) == sorted(f"{i}.bin" for i in ids[1:])
    assert "pulled 2 entries" in newest.stderr.decode()


def _on_terminal(args, env, *, stdin_tty: bool, stdout_tty: bool, answer: bytes | None = None, timeout=30):
    """Run `python -m ptgstore ARGS` with stdin and/or stdout (and stderr) on a pseudo-terminal;
    answers (status, what the terminal showed)."""
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "ptgstore", *args], env=env, start_new_session=True,
                               stdin=slave if stdin_tty else subprocess.DEVNULL,
                               stdout=slave if stdout_tty else subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    shown = b""
    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None or _readable(master):
            assert time.monotonic() < deadline, f"still running after {timeout} s; terminal shows {shown!r}"
            if _readable(master, 0.1):
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the terminal's other side is closed: everything was read
                    break
                shown += chunk
                if answer is not None and b"password for" in shown:
                    os.write(master, answer)
                    answer = None
        return process.wait(10), shown
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(master)


def _readable(fd, timeout=0.0) -> bool:
    import select

    return bool(select.select([fd], [], [], timeout)[0])


def _env(server, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTGSTORE_")}
    env.update(PTGSTORE_URL=server.url, PTGSTORE_TOKEN=server.token(), **extra)
    return env


def test_push_without_a_file_on_a_terminal_is_a_usage_error(server, rdb):
    status, shown = _on_terminal(["push", "cam"], _env(server), stdin_tty=True, stdout_tty=True)
    assert status == 2, shown
    assert b"no FILE given and standard input is a terminal" in shown
    assert rdb.exists("cam") == 0


def test_pull_refuses_to_write_entries_into_a_terminal(server, rdb):
    rdb.xadd("cam", {"d": b"\x00\x1b[2J binary"})
    status, shown = _on_terminal(["pull", "cam", "--from", "0", "--limit", "1"], _env(server),
                                 stdin_tty=False, stdout_tty=True)
    assert status == 2, shown
    assert b"give --out DIR, or redirect standard output" in shown and b"binary" not in shown


@pytest.mark.slow
def test_username_without_password_asks_at_a_terminal_without_echo(server, rdb):
    rdb.xadd("asked", {"d": b"x"})
    env = _env(server)
    del env["PTGSTORE_TOKEN"]
    status, shown = _on_terminal(["streams", "--username", "alice"], env, stdin_tty=True, stdout_tty=True,
                                 answer=b"alice\n")
    assert status == 0, shown
    prompt = shown.index(b"password for alice:")
    assert b"alice" not in shown[prompt + len(b"password for alice:"):].replace(b"asked", b""), "the password echoed"
    assert b"asked" in shown
    from_env = ptgstore(server, "streams", "--username", "alice", token=False, stdin=b"",
                        env_extra={"PTGSTORE_PASSWORD": "alice"})
    assert ok(from_env).stdout == b"asked\n"
    no_password = ptgstore(server, "streams", "--username", "alice", token=False, stdin=b"")
    assert no_password.returncode == 2 and b"PTGSTORE_PASSWORD" in no_password.stderr


@pytest.mark.slow
def test_streams_into_a_closed_pipe_exits_quietly(server, rdb):
    for i in range(20):
        rdb.xadd(f"stream-{i:02d}", {"d": b"x"})
    process = subprocess.Popen([sys.executable, "-m", "ptgstore", "streams"], env=_env(server),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before anything is written, as `| head -1` after its line
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 141
    assert stderr == b"", stderr.decode()


@pytest.mark.slow
def test_url_without_a_scheme_means_http(server, rdb):
    rdb.xadd("cam", {"d": b"x"})
    done = ok(ptgstore(server, "streams", "--url", server.url.removeprefix("http://")))
    assert done.stdout == b"cam\n"


def test_version():
    from importlib.metadata import version

    done = ok(subprocess.run([sys.executable, "-m", "ptgstore", "--version"], capture_output=True, timeout=60))
    assert done.stdout.decode().strip() == f"ptgstore {version('ptgstore')}"


def test_token_without_the_servers_secret_refuses(tmp_path, server):
    elsewhere = tmp_path / "not-the-server"
    done = subprocess.run([sys.executable, "-m", "ptgstore", "token", "--data-dir", str(elsewhere)],
                          capture_output=True, timeout=60, env=_env(server))
    assert done.returncode == 1 and done.stdout == b""
    assert f"no token signing secret in {elsewhere / 'secret'}".encode() in done.stderr
    assert b"PTGSTORE_DATA_DIR" in done.stderr
    assert not (elsewhere / "secret").exists()


@pytest.mark.slow
def test_refused_websocket_is_one_line(server, rdb):
    # push opens its WebSocket first: the handshake is what the server refuses
    bad = ptgstore(server, "push", "cam", "-", stdin=b"x", env_extra={"PTGSTORE_TOKEN": "not-a-token"})
    assert bad.returncode == 1
    # one line: the status and the server's reason (a body, when the server gives one)
    assert re.fullmatch(rb"ptgstore: refused \(HTTP 40[13]\): [^\n]+\n", bad.stderr), bad.stderr
    assert rdb.exists("cam") == 0


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="reads the read(2) syscall number of x86_64")
def test_one_ctrl_c_stops_a_push_typed_at_the_terminal(server, rdb):
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "ptgstore", "push", "cam", "-"], env=_env(server),
                               stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    os.close(slave)
    try:
        def reading_stdin():
            try:
                return Path(f"/proc/{process.pid}/syscall").read_text().startswith("0 0x0 ")  # read(0, ...)
            except OSError:
                return False

        wait_until(reading_stdin, timeout=30, what="the push to wait on its terminal")
        process.send_signal(signal.SIGINT)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(master)
    assert process.returncode == 130
    assert b"Traceback" not in process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    assert rdb.exists("cam") == 0


def _push_in(directory: Path, server, *args, stdin=subprocess.DEVNULL):
    """`ptgstore push ARGS` run in `directory`, standard input from `stdin` (bytes: piped in)."""
    piped = isinstance(stdin, bytes)
    return subprocess.run([sys.executable, "-m", "ptgstore", "push", *args], cwd=directory, env=_env(server),
                          input=stdin if piped else None, stdin=None if piped else stdin,
                          capture_output=True, timeout=60)


def _refused(done, words: str) -> str:
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert words in stderr and "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    return stderr


@pytest.mark.slow
def test_push_of_nothing_is_refused_and_stores_nothing(server, rdb, tmp_path):
    """`push frame1.jpg </dev/null` used to store an empty entry in a stream named frame1.jpg."""
    (tmp_path / "frame1.jpg").write_bytes(b"\xff\xd8 a frame")
    (tmp_path / "frames").mkdir()
    (tmp_path / "empty").write_bytes(b"")
    # the stream argument names a file and no FILE follows: the file was meant as the entry
    for stdin in (subprocess.DEVNULL, b"piped bytes"):
        hint = _refused(_push_in(tmp_path, server, "frame1.jpg", stdin=stdin), "frame1.jpg is a file: did you mean "
                        "`ptgstore push STREAM frame1.jpg`?")
        assert "ptgstore push frame1.jpg -" in hint  # how to push standard input to a stream of that name
    _refused(_push_in(tmp_path, server, "frames"), "frames is a directory: did you mean `ptgstore push STREAM frames/*`?")
    # an empty standard input is not an entry, given as '-' or not
    _refused(_push_in(tmp_path, server, "cam"), "nothing to push: standard input is empty")
    _refused(_push_in(tmp_path, server, "cam", "-", stdin=b""), "nothing to push: standard input is empty")
    _refused(_push_in(tmp_path, server, "cam", "frames"), "frames: a directory, not a file")
    assert ok(ptgstore(server, "streams")).stdout == b""
    assert rdb.exists("frame1.jpg", "frames", "cam") == 0
    # what is meant still works: '-' names standard input, and an empty file is an empty entry
    ok(_push_in(tmp_path, server, "frame1.jpg", "-", stdin=b"piped bytes"))
    ok(_push_in(tmp_path, server, "cam", "empty", "frame1.jpg"))
    assert [data for _, data in stored(rdb, "frame1.jpg")] == [b"piped bytes"]
    assert [data for _, data in stored(rdb, "cam")] == [b"", b"\xff\xd8 a frame"]


@pytest.mark.slow
def test_first_run_mistakes_are_one_line_that_says_what_to_do(server, rdb, tmp_path):
    (tmp_path / "frame1.jpg").write_bytes(b"a frame")
    (tmp_path / "a-file").write_bytes(b"")

    def one_line(done, status: int, words: str):
        stderr = done.stderr.decode()
        assert done.returncode == status and "Traceback" not in stderr, stderr
        assert [line for line in stderr.splitlines() if not line.startswith("pulled ")] == \
            [line for line in stderr.splitlines() if words in line or "ptgstore serve" in line], stderr
        assert words in stderr, stderr
        return stderr

    # a URL of another scheme (it used to end in websockets' traceback)
    one_line(ptgstore(server, "push", "cam", str(tmp_path / "frame1.jpg"), "--url", "ftp://127.0.0.1"), 2,
             "ptgstore push: --url ftp://127.0.0.1: ptgstore speaks http, https, ws, wss")
    # a stream list with an empty id (it used to end in an AttributeError's traceback)
    one_line(ptgstore(server, "pull", "cam+", "--history", "--out", str(tmp_path / "out")), 2,
             "ptgstore pull: 'cam+': empty stream id (streams are joined by '+': a+b)")
    # no server at the address: what failed, then where to look
    nobody = f"http://127.0.0.1:{free_port()}"
    for args in (["streams"], ["push", "cam", str(tmp_path / "frame1.jpg")]):
        stderr = one_line(ptgstore(server, *args, "--url", nobody), 1, "ptgstore: cannot ")
        assert stderr.splitlines()[-1] == (f"ptgstore: is ptgstore serving at {nobody}? Start it with `ptgstore "
                                           "serve`, or give its address with --url or PTGSTORE_URL")
    # an output directory that cannot be one
    rdb.xadd("cam", {"d": b"x"})
    one_line(ptgstore(server, "pull", "cam", "--history", "--out", str(tmp_path / "a-file")), 1,
             f"ptgstore pull: {tmp_path / 'a-file' / 'cam'}: Not a directory")
    one_line(ptgstore(server, "user", "add", "bob", "--password-stdin", "--data-dir", str(tmp_path / "a-file" / "d"),
                      stdin=b"a password\n"), 1, "ptgstore user: ")
    assert [data for _, data in stored(rdb, "cam")] == [b"x"]


@pytest.mark.slow
def test_replay_of_a_local_path_that_is_no_recording_says_so(server, tmp_path):
    """It used to ask the server for a recording named after the path (`recording id ... contains a '/'`),
    or replay an empty directory as 0 entries with status 0."""
    (tmp_path / "frame1.jpg").write_bytes(b"a frame")
    (tmp_path / "empty").mkdir()
    for source, words in ((tmp_path / "frame1.jpg", "is not a recording: give a .mcap file"),
                          (tmp_path / "empty", "no .mcap files in"),
                          (tmp_path / "gone.mcap", "no such file or directory")):
        done = ptgstore(server, "replay", str(source))
        assert done.returncode == 2, done.stderr
        stderr = done.stderr.decode()
        assert stderr.startswith("ptgstore replay: ") and words in stderr and str(source) in stderr, stderr
        assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
