"""`/mjpeg/{sid}`: multipart framing, the stand-by image, cursors and count, auth, clients leaving."""
from __future__ import annotations

import io
import socket
import time
from importlib import resources

import httpx
import pytest
from PIL import Image

from ptgstore.testing import wait_until
from support.servers import live_server, make_settings
from support.ws import push

STANDBY = resources.files("ptgstore").joinpath("static/standby.jpg").read_bytes()  # no frames in this stream yet
WAITING = resources.files("ptgstore").joinpath("static/standby-waiting.jpg").read_bytes()  # waiting for new frames
HEAD = b"--frame\r\nContent-Type: image/jpeg\r\n\r\n"


def jpeg(colour=(255, 0, 0), size=(32, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG", quality=95)
    return out.getvalue()


class Parts:
    """Reads an MJPEG response part by part (each read bounded by the client's timeout)."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self.chunks = response.iter_raw()
        self.buffer = b""
        self.raw = b""

    def next(self, deadline_s: float = 10.0) -> tuple[str, bytes]:
        deadline = time.monotonic() + deadline_s
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            assert time.monotonic() < deadline, "no complete part in time"
            chunk = next(self.chunks)
            self.buffer += chunk
            self.raw += chunk

    def _parse(self):
        if not self.buffer.startswith(b"--frame\r\n"):
            assert len(self.buffer) < 9 or False, f"part does not start with the boundary: {self.buffer[:40]!r}"
            return None
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        headers = self.buffer[9:head_end].decode()
        content_type = headers.split(":", 1)[1].strip()
        # a part ends at CRLF followed by the next boundary; the newest one is complete once the
        # image's own end marker is in
        body_start = head_end + 4
        following = self.buffer.find(b"\r\n--frame\r\n", body_start)
        if following >= 0:
            body, self.buffer = self.buffer[body_start:following], self.buffer[following + 2:]
            return content_type, body
        end = {"image/jpeg": b"\xff\xd9\r\n", "image/png": b"IEND\xaeB`\x82\r\n"}[content_type]
        if self.buffer.endswith(end):
            body, self.buffer = self.buffer[body_start:-2], b""
            return content_type, body
        return None


def open_mjpeg(server, sid, client=None, **query):
    client = client or httpx.Client(timeout=10)
    query.setdefault("token", server.token())
    return client.stream("GET", f"{server.url}/mjpeg/{sid}", params=query)


def test_standby_while_empty_then_frames_as_they_arrive(server):
    red, blue = jpeg((255, 0, 0)), jpeg((0, 0, 255))
    with open_mjpeg(server, "cam") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
        parts = Parts(response)
        assert parts.next() == ("image/jpeg", STANDBY)
        push(server, "cam", red)
        assert parts.next() == ("image/jpeg", red)
        push(server, "cam", blue)
        assert parts.next() == ("image/jpeg", blue)
    # byte for byte the original's framing
    assert parts.raw.startswith(HEAD + STANDBY + b"\r\n" + HEAD + red + b"\r\n" + HEAD + blue)


def test_newest_frame_at_once_with_star_and_no_standby(server):
    frames = [jpeg((i * 60, 0, 0)) for i in range(3)]
    push(server, "cam", *frames)
    with open_mjpeg(server, "cam", last_entry_id="*") as response:
        assert Parts(response).next() == ("image/jpeg", frames[-1])


def test_a_stream_with_frames_shows_its_newest_frame_at_once(server):
    """What a person opening /mjpeg/STREAM expects: the camera as it is now, then each new frame,
    not a stand-by image that says the stream has no frames."""
    frames = [jpeg((0, 0, i * 60)) for i in range(3)]
    push(server, "cam", *frames)
    for latest in ("true", "false"):
        with open_mjpeg(server, "cam", latest=latest) as response:
            parts = Parts(response)
            assert parts.next() == ("image/jpeg", frames[-1])
            newer = jpeg(((latest == "true") * 255, 255, 0))
            push(server, "cam", newer)
            assert parts.next() == ("image/jpeg", newer)
            frames.append(newer)
        assert STANDBY not in parts.raw and WAITING not in parts.raw


def test_dollar_on_a_stream_with_frames_stands_by_waiting_for_new_ones(server):
    """`$` asks for new frames only: the stand-by then says it waits for them (the stream has some)."""
    old, new = jpeg((10, 10, 10)), jpeg((200, 200, 200))
    push(server, "cam", old)
    with open_mjpeg(server, "cam", last_entry_id="$") as response:
        parts = Parts(response)
        assert parts.next() == ("image/jpeg", WAITING)
        push(server, "cam", new)
        assert parts.next() == ("image/jpeg", new)
    assert old not in parts.raw
    assert WAITING != STANDBY


@pytest.mark.slow
def test_when_the_camera_stops_the_stand_by_says_waiting(server, monkeypatch):
    from ptgstore.routes import mjpeg

    monkeypatch.setattr(mjpeg, "STANDBY_AFTER", 0.5)  # (10 s in service: the test need not wait that long)
    frame, later = jpeg((0, 255, 255)), jpeg((255, 0, 255))
    push(server, "cam", frame)
    with open_mjpeg(server, "cam") as response:
        parts = Parts(response)
        assert parts.next() == ("image/jpeg", frame)
        assert parts.next() == ("image/jpeg", WAITING)  # no new frame for a while: the camera stopped
        push(server, "cam", later)
        assert parts.next() == ("image/jpeg", later)
    with open_mjpeg(server, "never-had-frames") as response:
        parts = Parts(response)
        assert parts.next() == ("image/jpeg", STANDBY)
        push(server, "never-had-frames", frame)
        assert parts.next() == ("image/jpeg", frame)
        assert parts.next() == ("image/jpeg", WAITING)


def test_a_newest_entry_that_is_no_image_shows_the_stand_by(server):
    frame = jpeg()
    push(server, "mixed", frame, b'{"not": "an image"}')
    with open_mjpeg(server, "mixed") as response:
        parts = Parts(response)
        assert parts.next() == ("image/jpeg", WAITING)  # not a blank box until the next image
        push(server, "mixed", frame)
        assert parts.next() == ("image/jpeg", frame)


def test_a_store_that_cannot_be_read_is_a_503_not_a_broken_stream(tmp_path):
    """The pull is opened before the answer starts: without Redis the viewer gets a 503 with a reason."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # (nothing listens there once the probe is closed)
    with live_server(make_settings(tmp_path, f"redis://127.0.0.1:{port}")) as live:
        for query in ({}, {"last_entry_id": "$"}, {"last_entry_id": "*"}, {"last_entry_id": "0"}):
            reply = httpx.get(f"{live.url}/mjpeg/cam", params={"token": live.token(), **query}, timeout=20)
            assert reply.status_code == 503 and "unavailable" in reply.json()["detail"]


def test_in_order_from_a_cursor_with_count(server):
    frames = [jpeg((0, i * 40, 0)) for i in range(5)]
    ids = push(server, "cam", *frames)
    with open_mjpeg(server, "cam", last_entry_id=ids[0], count=2, latest="false") as response:
        parts = Parts(response)
        assert [parts.next()[1] for _ in range(4)] == frames[1:]
    with open_mjpeg(server, "cam", last_entry_id="0", latest="false") as response:
        parts = Parts(response)
        assert [parts.next()[1] for _ in range(5)] == frames


def test_png_is_sent_as_png_and_other_entries_are_skipped(server):
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(out, format="PNG")
    png, frame = out.getvalue(), jpeg()
    with open_mjpeg(server, "mixed", last_entry_id="0", latest="false") as response:
        parts = Parts(response)
        assert parts.next() == ("image/jpeg", STANDBY)
        push(server, "mixed", b'{"not": "an image"}', png, b"\x00\x01", frame)
        assert parts.next() == ("image/png", png)
        assert parts.next() == ("image/jpeg", frame)


def test_token_by_query_or_cookie_and_refused_without(server):
    push(server, "cam", jpeg())
    with httpx.Client(timeout=10) as client:
        refused = client.get(f"{server.url}/mjpeg/cam")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        forged = client.get(f"{server.url}/mjpeg/cam", params={"token": "not.a.token"})
        assert forged.status_code == 401
        login = client.post(f"{server.url}/token", data={"username": "test", "password": "test"})
        assert login.status_code == 200 and "authorization" in client.cookies
        with client.stream("GET", f"{server.url}/mjpeg/cam", params={"last_entry_id": "*"}) as response:
            assert response.status_code == 200
            assert Parts(response).next()[1] == jpeg()


@pytest.mark.parametrize("query, reason", [
    ({"last_entry_id": "bogus"}, "malformed entry id"),
    ({"count": "0"}, "count"),
    ({"latest": "maybe"}, "latest"),
])
def test_bad_query_is_a_400_with_a_reason(server, query, reason):
    reply = httpx.get(f"{server.url}/mjpeg/cam", params={"token": server.token(), **query}, timeout=10)
    assert reply.status_code == 400
    assert reason in reply.json()["detail"]


def test_head_answers_the_headers_only(server):
    reply = httpx.head(f"{server.url}/mjpeg/cam", params={"token": server.token()}, timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "multipart/x-mixed-replace; boundary=frame"
    assert reply.content == b""
    assert "cam" not in server.app.state.hub.followers


def test_a_client_that_leaves_releases_the_stream(server):
    hub = server.app.state.hub
    with open_mjpeg(server, "cam") as response:
        parts = Parts(response)  # kept: a dropped reader closes the response, and the server then lets go at once
        parts.next()
        assert "cam" in hub.followers
    wait_until(lambda: "cam" not in hub.followers, timeout=10, what="the follower to be released")


def test_a_client_that_stops_reading_holds_no_frames(server):
    """A client that never reads: the server stops taking frames for it once its socket buffers fill,
    and the hub keeps only its bounded buffer; other viewers go on getting every frame."""
    frame = b"\xff\xd8\xff" + bytes(200_000) + b"\xff\xd9"
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET /mjpeg/cam?token={server.token()} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    try:
        hub = server.app.state.hub
        wait_until(lambda: "cam" in hub.followers, timeout=10, what="the stalled client to subscribe")
        with open_mjpeg(server, "cam") as response:
            parts = Parts(response)
            assert parts.next()[1] == STANDBY
            for i in range(60):
                frame_i = frame[:100] + bytes([i]) + frame[101:]
                push(server, "cam", frame_i)
                assert parts.next()[1] == frame_i
        follower = hub.followers["cam"]
        assert len(follower.entries) <= hub.buffer_entries
        assert follower.buffered_bytes <= hub.buffer_bytes
    finally:
        stalled.close()
    wait_until(lambda: "cam" not in hub.followers, timeout=10, what="the stalled client to be released")


def test_static_files_are_package_data():
    """`pip install .` (not editable) must carry the stand-by image and the dashboard: every file
    under ptgstore/static matches pyproject's package-data."""
    import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ptgstore"]
    files = [p.relative_to(root / "ptgstore").as_posix() for p in (root / "ptgstore" / "static").rglob("*") if p.is_file()]
    assert {"static/standby.jpg", "static/standby-waiting.jpg", "static/index.html", "static/ptgstore.js"} <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) and name.count("/") == pattern.count("/") for pattern in patterns), name
