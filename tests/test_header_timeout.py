"""Unfinished request headers are dropped after serving.HEADER_TIMEOUT (slowloris); nothing else is."""
import socket
import time

import httpx
import pytest

from ptgstore import serving

from support.servers import live_server, make_settings
from support.ws import push, ws_connect

pytestmark = pytest.mark.skipif(serving.HttpToolsProtocol is None, reason="needs httptools")


@pytest.fixture
def quick(tmp_path, rdb, redis_server, monkeypatch):
    monkeypatch.setattr(serving, "HEADER_TIMEOUT", 1.0)  # (10 s in service: the test need not wait that long)
    with live_server(make_settings(tmp_path, redis_server.url)) as live:
        yield live


def closed_by_server(sock: socket.socket, within: float = 30.0) -> bool:
    """Whether the server closes the connection (reads nothing more) within `within` seconds."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.slow
def test_unfinished_headers_are_dropped(quick):
    sockets = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", quick.port), timeout=10)
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # ... and never the rest
            sockets.append(sock)
        silent = socket.create_connection(("127.0.0.1", quick.port), timeout=10)  # not even a request line
        sockets.append(silent)
        assert httpx.get(quick.url + "/ping").json() is True  # others are served meanwhile
        for sock in sockets:
            assert closed_by_server(sock)
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_trickled_headers_do_not_keep_a_connection(quick):
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        deadline = time.monotonic() + 30
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                sock.sendall(b"X-A: b\r\n")  # a header line now and then, never the end of them
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed = closed_by_server(sock, within=0.2)
        assert closed, "the server kept a connection whose headers never ended"


@pytest.mark.slow
def test_a_kept_alive_connection_must_finish_its_next_headers_too(quick):
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the next request, unfinished
        assert closed_by_server(sock)


@pytest.mark.slow
def test_slow_bodies_and_open_sockets_are_not_cut(quick):
    with ws_connect(quick, "/data/cam/pull") as pull:
        with pytest.raises(TimeoutError):
            pull.recv(timeout=3)  # open three header timeouts long, idle
        push(quick, "cam", b"late")
        pull.recv(timeout=10)
        assert pull.recv(timeout=10) == b"late"
    # headers complete, the body trickling in for longer than the header timeout: served
    body = b'{"fps": 30}'
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as sock:
        sock.sendall(f"PUT /streams/cam?token={quick.token()} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        for byte in body:
            sock.sendall(bytes([byte]))
            time.sleep(0.25)  # (pacing a slow client, not waiting for the server)
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
