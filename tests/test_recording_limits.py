"""Hostile recordings: what a token holder can upload, and what reading recordings (upload checks,
`GET /recordings/{id}`, replay) costs the server. A zstd bomb, chunks that lie about their size,
entries over the message limit, large uploads streamed to disk, files private to the server's
account and served as inert data."""
from __future__ import annotations

import io
import json
import os
import stat
import threading
from pathlib import Path

import httpx
import pytest
import zstandard
from mcap.writer import CompressionType, Writer
from websockets.exceptions import ConnectionClosed

from support import mcapforge
from ptgstore.testing import wait_until
from support.servers import ServeProcess, live_server, make_settings
from support.ws import push, ws_connect

MiB = 1024 * 1024
RSS_BUDGET = 64 * MiB


def proc_status(pid: int, field: str) -> int:
    """A /proc/<pid>/status size (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> None:
    """Start the process's peak RSS (VmHWM) over from its current RSS (proc(5): clear_refs, 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def valid_mcap(entries: list[tuple[str, int, bytes]], compression=CompressionType.ZSTD, chunk_size=1024 * 1024) -> bytes:
    """A file written by the mcap package: entries (stream, ms, bytes) on raw channels."""
    out = io.BytesIO()
    writer = Writer(out, chunk_size=chunk_size, compression=compression)
    writer.start()
    channels: dict[str, int] = {}
    for seq, (sid, ms, data) in enumerate(entries):
        if sid not in channels:
            channels[sid] = writer.register_channel(sid, "application/octet-stream", 0)
        writer.add_message(channels[sid], log_time=ms * 1_000_000 + seq, data=data, publish_time=ms * 1_000_000,
                           sequence=seq)
    writer.finish()
    return out.getvalue()


def upload(http: httpx.Client, rec_id: str, name: str, data: bytes, **params) -> httpx.Response:
    return http.post(f"/recordings/upload/{rec_id}/{name}", files={"file": (name, data)}, params=params)


def replay(server, **query) -> tuple[list[dict], int, str]:
    """The reports of a replay, and its close code and reason."""
    reports = []
    with ws_connect(server, "/recordings/replay", **query) as ws:
        while True:
            try:
                reports.append(json.loads(ws.recv(timeout=60)))
            except ConnectionClosed as closed:
                return reports, closed.rcvd.code, closed.rcvd.reason


def plant(root: Path, rec_id: str, data: bytes, sid: str | None = None) -> None:
    """A recording file that got into the recordings directory otherwise than by an upload (copied
    there, or recorded under other limits); with `sid`, a kept info object naming that stream, so that
    replay reads the file itself."""
    rec_dir = root / rec_id
    rec_dir.mkdir(parents=True)
    (rec_dir / "part-000001.mcap").write_bytes(data)
    if sid is not None:
        stats = {"count": 1, "bytes": 1, "first-entry": "1000-0", "last-entry": "1000-0"}
        (rec_dir / "info.json").write_bytes(json.dumps({"name": rec_id, "streams": {sid: stats}}).encode())


@pytest.mark.slow
def test_a_zstd_bomb_is_refused_before_it_is_unpacked_and_rss_stays_bounded(tmp_path, rdb, redis_server):
    """A 33 KB file whose chunk unpacks to 1 GiB, as an upload, behind `GET /recordings/{id}` and in a
    replay: refused with the reason, and the real server's peak RSS stays within 64 MiB of its start."""
    honest = mcapforge.zstd_bomb(1024 * MiB)  # declares its 1 GiB
    lying = mcapforge.zstd_bomb(1024 * MiB, honest=False)  # declares 1 MiB, unpacks to 1 GiB
    assert len(honest) < 40_000 and len(lying) < 40_000
    data = tmp_path / "data"
    root = data / "recordings"
    with ServeProcess(data, env={"PTGSTORE_REDIS_URL": redis_server.url}) as server:
        server.wait_ready()
        http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token()}"}, timeout=60)
        # warm up every path once with a valid file, so that the start is measured with the code loaded
        small = valid_mcap([("cam", 1000 + i, bytes(1000)) for i in range(50)])
        assert upload(http, "warm", "a.mcap", small).status_code == 200
        assert http.get("/recordings/warm").json()["streams"]["cam"]["count"] == 50
        assert replay(server, rec_id="warm", prefix="w:", fullspeed="true")[1] == 1000
        plant(root, "bomb-info", honest)
        plant(root, "lying-info", lying)
        plant(root, "bomb-replay", honest, sid="bomb")
        plant(root, "lying-replay", lying, sid="bomb")

        pid = server.process.pid
        start = proc_status(pid, "VmRSS")
        reset_peak(pid)

        reply = upload(http, "bomb", "bomb.mcap", honest)
        assert reply.status_code == 413, reply.text
        assert "declares 1073741" in reply.json()["detail"] and "PTGSTORE_MAX_CHUNK" in reply.json()["detail"]
        reply = upload(http, "lying", "lying.mcap", lying)
        assert reply.status_code == 400 and "is not a readable MCAP file" in reply.json()["detail"], reply.text
        reply = http.get("/recordings/bomb-info")
        assert reply.status_code == 413 and "PTGSTORE_MAX_CHUNK" in reply.json()["detail"]
        reply = http.get("/recordings/lying-info")
        assert reply.status_code == 400 and reply.json()["detail"]
        _, code, reason = replay(server, rec_id="bomb-replay", prefix="r:", fullspeed="true")
        assert code == 1009 and "PTGSTORE_MAX_CHUNK" in reason
        _, code, reason = replay(server, rec_id="lying-replay", prefix="r:", fullspeed="true")
        assert code == 1007 and reason

        peak = proc_status(pid, "VmHWM")
        print(f"server RSS at the start {start / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB")
        assert peak - start < RSS_BUDGET, f"RSS from {start / MiB:.0f} MiB to a peak of {peak / MiB:.0f} MiB"
        assert http.get("/ping").json() is True
        assert "bomb" not in http.get("/recordings").json() and "lying" not in http.get("/recordings").json()
        assert not list((root / ".uploads").iterdir())


@pytest.fixture
def small_limits(tmp_path, rdb, redis_server):
    """A server with small limits: entries up to 64 KiB, uploads up to 2 MiB."""
    settings = make_settings(tmp_path, redis_server.url, max_message=64 * 1024, max_upload=2 * MiB)
    with live_server(settings) as live:
        yield live


def test_uploads_larger_than_a_message_stream_to_disk_under_their_own_limit(small_limits):
    http = small_limits.http()
    root = small_limits.app.state.recorder.root
    entries = [("cam", 1000 + i, os.urandom(60 * 1024)) for i in range(25)]  # 1.5 MiB: over 64 KiB, under 2 MiB
    reply = upload(http, "big", "session.mcap", valid_mcap(entries))
    assert reply.status_code == 200, reply.text
    assert http.get("/recordings/big").json()["streams"]["cam"]["count"] == 25
    too_big = valid_mcap([("cam", 1000 + i, os.urandom(60 * 1024)) for i in range(40)])  # 2.4 MiB
    reply = upload(http, "huge", "session.mcap", too_big)
    assert reply.status_code == 413 and "PTGSTORE_MAX_UPLOAD" in reply.json()["detail"]

    def chunked():  # no Content-Length: counted as it arrives
        body, boundary = io.BytesIO(too_big), "xyzzy"
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.mcap"\r\n\r\n'.encode()
        while piece := body.read(256 * 1024):
            yield piece
        yield f"\r\n--{boundary}--\r\n".encode()

    reply = http.post("/recordings/upload/huge/session.mcap", content=chunked(),
                      headers={"Content-Type": "multipart/form-data; boundary=xyzzy"})
    assert reply.status_code == 413 and "PTGSTORE_MAX_UPLOAD" in reply.json()["detail"]
    assert http.get("/recordings").json() == ["big"]
    assert not list((root / ".uploads").iterdir())  # nothing of a refused upload is kept


def wide_window(data: bytes) -> bytes:
    """`data` as a zstd frame that asks for a 128 MiB window (as `zstd --long=27` writes, size unknown)."""
    params = zstandard.ZstdCompressionParameters(window_log=27, write_content_size=False)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    return compressor.compress(data) + compressor.flush()


def test_upload_refusals_say_why_and_keep_nothing(small_limits):
    http = small_limits.http()
    root = small_limits.app.state.recorder.root
    head = mcapforge.channel(1, "cam")
    records = head + b"".join(mcapforge.message(1, i, (1000 + i) * 1_000_000, bytes(100)) for i in range(10))
    over = head + mcapforge.message(1, 0, 10**9, bytes(70 * 1024))
    cases = [
        (valid_mcap([("cam", 1000, bytes(70 * 1024))]), 413, "over PTGSTORE_MAX_MESSAGE"),
        (mcapforge.zstd_chunk_file(over), 413, "over PTGSTORE_MAX_MESSAGE"),
        (mcapforge.mcap_file(over), 413, "over PTGSTORE_MAX_MESSAGE"),  # not in a chunk
        (mcapforge.zstd_chunk_file(records, declared=len(records) - 131), 400, "more bytes than it declares"),
        (mcapforge.zstd_chunk_file(records, declared=len(records) + 50), 400, "fewer bytes than it declares"),
        (mcapforge.lz4_chunk_file(records, declared=len(records) - 131), 400, "more bytes than it declares"),
        (mcapforge.zstd_chunk_file(records, crc=12345), 400, "CRC"),
        (mcapforge.mcap_file(mcapforge.chunk(records, "brotli", len(records))), 400, "not zstd or lz4"),
        (mcapforge.mcap_file(mcapforge.chunk(b"\x00" * 10, "", 10 ** 12)), 413, "PTGSTORE_MAX_CHUNK"),
        (mcapforge.mcap_file(head + mcapforge.message_header(1, 0, 0, 2**40)), 400, "left"),  # longer than the file
        (mcapforge.mcap_file(mcapforge.message(7, 0, 0, b"x")), 400, "no channel record"),
        (valid_mcap([("cam", 1000, b"x")])[:-30], 400, "MCAP"),  # truncated
        (b"not an mcap file", 400, "magic"),
        # a zstd frame asking for a 128 MiB window (zstd --long=27): refused before any memory is taken
        (mcapforge.mcap_file(mcapforge.chunk(wide_window(records), "zstd", len(records))), 413, "window"),
    ]
    for number, (data, status, words) in enumerate(cases):
        reply = upload(http, f"bad-{number}", "x.mcap", data)
        assert (reply.status_code, words in reply.text) == (status, True), (number, reply.text)
    for content_type, body, words in [
        ("application/octet-stream", b"raw bytes", "multipart/form-data"),
        ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--b--\r\n",
         "one file part"),
        ("multipart/form-data; boundary=b", b"".join(
            b'--b\r\nContent-Disposition: form-data; name="f"; filename="f%d"\r\n\r\nx\r\n' % i for i in range(2))
         + b"--b--\r\n", "one file part"),
    ]:
        reply = http.post("/recordings/upload/bad/x.mcap", content=body, headers={"Content-Type": content_type})
        assert reply.status_code == 400 and words in reply.json()["detail"], reply.text
    # a web page the user visits cannot upload with the user's cookie (CSRF): refused before the body is read
    cookie = httpx.Client(base_url=small_limits.url, cookies={"authorization": f"Bearer {small_limits.token()}"})
    reply = cookie.post("/recordings/upload/csrf/x.mcap", files={"file": ("x.mcap", records)},
                        headers={"Origin": "http://evil.example"})
    assert reply.status_code == 403
    assert http.get("/recordings").json() == []
    assert not list((root / ".uploads").iterdir())
    lz4_file = mcapforge.lz4_chunk_file(records)  # a valid lz4 chunk is read
    assert upload(http, "lz4", "x.mcap", lz4_file).status_code == 200
    assert http.get("/recordings/lz4").json()["streams"]["cam"]["count"] == 10


def test_replay_skips_and_counts_entries_over_the_message_limit(tmp_path, rdb, redis_server):
    """A recording made under a larger limit, replayed by a server whose PTGSTORE_MAX_MESSAGE is smaller."""
    entries = [("cam", 1000 + i, b"small %d" % i) for i in range(5)] + [("cam", 1010, os.urandom(300 * 1024))] + [
        ("imu", 1000 + i, b"imu %d" % i) for i in range(5)]
    data = valid_mcap(sorted(entries, key=lambda e: e[1]))
    with live_server(make_settings(tmp_path, redis_server.url, max_message=MiB)) as first:
        assert upload(first.http(), "mixed", "x.mcap", data).status_code == 200
    with live_server(make_settings(tmp_path, redis_server.url, max_message=256 * 1024)) as second:
        http = second.http()
        info = http.get("/recordings/mixed").json()
        assert info["streams"]["cam"]["count"] == 6  # the recording holds it
        reports, code, reason = replay(second, rec_id="mixed", prefix="r:", fullspeed="true", interval="0.05")
        assert code == 1000 and reason == "replay done, 1 entries over PTGSTORE_MAX_MESSAGE skipped"
        assert reports[-1]["skipped"] == {"cam": 1}
        assert sum(r["updates"].get("cam", 0) for r in reports) == 5
        cam = http.get("/data/r:cam", params={"last_entry_id": "0", "count": 100})
        assert len(json.loads(cam.headers["entry-offset"])) == 5 and len(cam.content) < 1000
        reply = upload(http, "again", "x.mcap", data)  # this server refuses it as an upload
        assert reply.status_code == 413 and "307200 bytes on stream 'cam'" in reply.json()["detail"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_recordings_are_private_to_the_server_account(tmp_path, rdb, redis_server):
    settings = make_settings(tmp_path, redis_server.url, recording_segment_seconds=1)
    root = settings.recordings_path
    root.mkdir(parents=True, mode=0o755)
    os.chmod(root, 0o755)  # as an earlier version left it
    with live_server(settings) as server:
        assert mode(root) == 0o700
        http = server.http()
        assert http.put("/recordings/start", params={"rec_id": "private"}).json() == "private"
        push(server, "cam", b"one", b"two", b"three")
        assert http.put("/recordings/stop").json() == 1
        assert upload(http, "private", "extra.bin", b"uploaded").status_code == 200
        assert upload(http, "uploaded", "x.mcap", valid_mcap([("cam", 1000, b"x")])).status_code == 200
        assert http.put("/recordings/private/hide").json() is True
        http.get("/recordings/uploaded")  # writes its info object
    directories = [root, root / ".uploads", root / "private", root / "uploaded"]
    files = [p for d in directories for p in d.iterdir() if p.is_file()]
    names = {p.name for p in files}
    assert {"info.json", "extra.bin", ".hidden", "x.mcap", ".ptgstore-recordings"} <= names
    assert any(n.startswith("part-") and n.endswith(".mcap") for n in names)  # a shard's segment
    assert {str(d): oct(mode(d)) for d in directories} == {str(d): "0o700" for d in directories}
    assert {str(f): oct(mode(f)) for f in files} == {str(f): "0o600" for f in files}


def test_recording_files_are_served_as_inert_downloads(small_limits):
    http = small_limits.http()
    for name, data in [("evil.js", b"alert(document.cookie)"), ("page.html", b"<script>alert(1)</script>"),
                       ("image.svg", b"<svg onload='alert(1)'/>"), ("x.mcap", valid_mcap([("cam", 1000, b"x")]))]:
        assert upload(http, "files", name, data).status_code == 200
        reply = http.get(f"/recordings/static/files/{name}")
        assert reply.status_code == 200 and reply.content == data
        assert reply.headers["content-type"] == "application/octet-stream", name
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["content-security-policy"] == "sandbox"
        assert reply.headers["content-disposition"].startswith("attachment")
    reply = http.get("/recordings/static/files/info.json")  # written when the info was asked for
    http.get("/recordings/files")
    reply = http.get("/recordings/static/files/info.json")
    assert reply.headers["content-type"] == "application/octet-stream" and reply.json()["name"] == "files"


def test_two_uploads_of_one_name_at_once_keep_their_own_temporary_files(small_limits):
    """Upload A streams half its body and waits; meanwhile A's bytes are on disk in a private file of its
    own, and upload B of the same name completes; then A completes and its file is the one kept."""
    http = small_limits.http()
    root = small_limits.app.state.recorder.root
    first = os.urandom(1536 * 1024)
    second = os.urandom(512 * 1024)
    resume = threading.Event()
    result: dict = {}

    def slow_body():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="same.bin"\r\n\r\n'
        yield first[:1280 * 1024]
        if not resume.wait(30):
            raise AssertionError("never resumed")
        yield first[1280 * 1024:]
        yield b"\r\n--b--\r\n"

    def upload_a():
        result["a"] = http.post("/recordings/upload/both/same.bin", content=slow_body(), params={"overwrite": "true"},
                                headers={"Content-Type": "multipart/form-data; boundary=b"})

    thread = threading.Thread(target=upload_a)
    thread.start()
    try:
        temp = wait_until(lambda: [p for p in (root / ".uploads").glob("*") if p.stat().st_size >= MiB]
                          if (root / ".uploads").is_dir() else None, timeout=30, what="A's bytes on disk")
        assert len(temp) == 1 and mode(temp[0]) == 0o600
        reply = upload(http, "both", "same.bin", second, overwrite="true")
        assert reply.status_code == 200 and reply.json()["size"] == len(second)
        assert (root / "both" / "same.bin").read_bytes() == second
        assert temp[0].exists() and temp[0].stat().st_size >= MiB  # B did not touch A's file
    finally:
        resume.set()
        thread.join(60)
    assert result["a"].status_code == 200 and result["a"].json()["size"] == len(first)
    assert (root / "both" / "same.bin").read_bytes() == first
    assert not list((root / ".uploads").iterdir())
    reply = upload(http, "both", "same.bin", second)  # without overwrite=true: the file stays
    assert reply.status_code == 409 and (root / "both" / "same.bin").read_bytes() == first


@pytest.mark.slow
def test_the_upload_memory_benchmark_runs_within_its_budget():
    """The measured claim at a small size: valid uploads and their replays, the server's peak RSS within
    64 MiB of what it was before each (the benchmark exits 1 otherwise)."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "benchmarks.upload_memory", "--mib", "16", "--large", "2",
                          "--images", "2"], cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert [line.split("|")[1].strip() for line in run.stdout.splitlines()[2:5]] == ["many", "large", "images"]
    assert "largest rise of the server's RSS" in run.stdout
