"""SIGTERM while a pusher is mid-stream: in-flight batches are stored and acked, sockets
close with 1001, and what Redis holds is exactly what was acked."""
from __future__ import annotations

import threading
import time
from collections import deque

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from ptgstore.testing import wait_until
from support.servers import ServeProcess
from support.ws import expect_close

pytestmark = pytest.mark.slow  # a graceful shutdown under load

IN_FLIGHT = 8  # batches sent ahead of their acks, so some are mid-way when the signal lands
ENTRIES_PER_BATCH = 3


class Pusher(threading.Thread):
    """Pushes numbered batches with acks, several in flight, until the server closes the socket."""

    def __init__(self, url: str, deadline: float):
        super().__init__(daemon=True)
        self.url = url
        self.deadline = deadline
        self.acked: dict[str, bytes] = {}
        self.sent_batches = 0
        self.close: tuple[int, str] | None = None
        self.error: BaseException | None = None

    def batch(self, n: int) -> list[bytes]:
        return [b"batch %06d entry %d " % (n, i) + bytes([n % 251]) * (i * 100) for i in range(ENTRIES_PER_BATCH)]

    def run(self):
        pending: deque[list[bytes]] = deque()
        try:
            with connect(self.url, open_timeout=10, compression=None) as ws:
                try:
                    while time.monotonic() < self.deadline and self.sent_batches < 200_000:
                        entries = self.batch(self.sent_batches)
                        offsets, at = [], 0
                        for data in entries:
                            offsets.append(at)
                            at += len(data)
                        ws.send(str(offsets))
                        ws.send(b"".join(entries))
                        pending.append(entries)
                        self.sent_batches += 1
                        while len(pending) >= IN_FLIGHT:
                            self._take_ack(ws.recv(timeout=10), pending)
                except ConnectionClosed:
                    pass
                # acks sent before the close frame are still readable
                try:
                    while pending:
                        self._take_ack(ws.recv(timeout=10), pending)
                except ConnectionClosed as closed:
                    self.close = (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else None
                else:
                    self.close = expect_close(ws, timeout=10)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _take_ack(self, message: str, pending: deque) -> None:
        ids = message.split(",")
        entries = pending.popleft()
        assert len(ids) == len(entries)
        self.acked.update(zip(ids, entries))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_mid_push_acks_in_flight_batches_and_closes_1001(tmp_path, redis_server, rdb, workers):
    # no trimming: every stored entry must still be there to compare
    server = ServeProcess(tmp_path / "data", "--redis-url", redis_server.url, "--workers", workers,
                          env={"PTGSTORE_MAX_LEN": "10000000"}).wait_ready()
    try:
        token = server.token()
        pusher = Pusher(f"{server.ws_url}/data/cam/push?batch=true&ack=true&token={token}",
                        deadline=time.monotonic() + 60)
        with connect(f"{server.ws_url}/data/idle/pull?token={token}", open_timeout=10) as pull:
            pusher.start()
            wait_until(lambda: len(pusher.acked) >= 600 or pusher.error or not pusher.is_alive(), timeout=30,
                       what="the pusher to get going")
            assert pusher.error is None and pusher.is_alive()
            status = server.terminate(timeout=40)
            pusher.join(30)
            assert not pusher.is_alive()
            pull_close = expect_close(pull, timeout=10)
    finally:
        server.terminate()
    assert pusher.error is None, repr(pusher.error)
    # uvicorn re-raises SIGTERM after a clean shutdown
    assert status in (0, -15), server.output[-3000:]
    assert "Application shutdown complete" in server.output
    assert pusher.close == (1001, "server shutting down")
    assert pull_close == (1001, "server shutting down")
    stored = {entry_id.decode(): fields[b"d"] for entry_id, fields in rdb.xrange("cam")}
    assert len(pusher.acked) >= 600
    # every acked entry is stored, byte for byte ...
    assert {i: stored.get(i) for i in pusher.acked} == pusher.acked
    # ... and nothing was stored without its ack: batches in flight at the signal finished and were acked
    assert set(stored) == set(pusher.acked)
    assert pusher.sent_batches * ENTRIES_PER_BATCH >= len(stored)
    assert 'ws_close kind=push streams="cam"' in server.output
    assert "code=1001 by=server" in server.output
