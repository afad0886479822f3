"""Crash durability: SIGKILL the server, its embedded Redis, or both, during a stream of acked pushes.

After a restart on the same data directory every acknowledged entry is there, byte-exact
and in order; a batch in flight at the crash is there entirely or not at all.
"""
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import msgpack
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from ptgstore.testing import free_port, wait_until
from ptgstore.auth import Authenticator
from ptgstore.settings import Settings

pytestmark = pytest.mark.slow  # SIGKILLed servers and restarts

BATCH = 4


class ServerProcess:
    """`python -m ptgstore serve` with its embedded Redis, as a user runs it."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.redis_pids: set[int] = set()
        self.log = data_dir.parent / "server.log"

    def start(self) -> "ServerProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PTGSTORE_", "WEBSOCKETS_"))}
        env["PTGSTORE_MAX_LEN"] = "1000000"  # retention must not be mistaken for loss
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ptgstore", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        wait_until(self._answers, timeout=30, what="ptgstore serve to answer")
        self.redis_pids.add(self.redis_pid())
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(self.url + "/ping", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def redis_pid(self) -> int:
        return json.loads((self.data_dir / "redis" / "state.json").read_text())["pid"]

    def token(self) -> str:
        return Authenticator(Settings(data_dir=str(self.data_dir))).issue("crash-test")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def kill_redis(self) -> None:
        pid = self.redis_pid()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive_redis(pid), what="embedded redis to die")

    def cleanup(self) -> None:
        """Stop everything this test started: the server and every embedded redis-server it left."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        # a Redis restarted by the server's watcher just before the server died is in no state file
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _alive_redis(int(entry.name)):
                try:
                    if str(self.data_dir).encode() in (entry / "cmdline").read_bytes():
                        self.redis_pids.add(int(entry.name))
                except OSError:
                    continue
        for pid in self.redis_pids:
            if _alive_redis(pid):
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda: not _alive_redis(pid), what=f"redis-server {pid} to die")


def _alive_redis(pid: int) -> bool:
    # the pid must still be a redis-server (not reused), and not a zombie awaiting its reaper
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"redis-server" in cmdline and "State:\tZ" not in status


class AckedPusher(threading.Thread):
    """Pushes with ack until the socket dies; remembers exactly what was acknowledged."""

    def __init__(self, server: ServerProcess, sid: str, batched: bool):
        super().__init__(daemon=True)
        self.server, self.sid, self.batched = server, sid, batched
        self.acked: list[tuple[str, bytes]] = []
        self.in_flight: list[bytes] = []
        self.ended: str | None = None
        self.limit = 20_000

    def run(self) -> None:
        query = "ack=true" + ("&batch=true&header=msgpack" if self.batched else "")
        url = f"ws://127.0.0.1:{self.server.port}/data/{self.sid}/push?{query}&token={self.server.token()}"
        try:
            with connect(url, open_timeout=10, compression=None) as ws:
                for n in range(self.limit):
                    self._push(ws, n)
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            self.ended = repr(exc)

    def _push(self, ws, n: int) -> None:
        count = BATCH if self.batched else 1
        self.in_flight = [b"%s-%d-%d|" % (self.sid.encode(), n, i) + os.urandom(n % 700) for i in range(count)]
        if self.batched:
            ends, total = [], 0
            for data in self.in_flight:
                total += len(data)
                ends.append(total)
            ws.send(msgpack.packb(ends))
            ws.send(b"".join(self.in_flight))
        else:
            ws.send(self.in_flight[0])
        ids = ws.recv(timeout=20).split(",")
        assert len(ids) == count
        self.acked += list(zip(ids, self.in_flight))
        self.in_flight = []


class RestPusher(AckedPusher):
    """Uploads two entries per multipart POST; an answer with their ids is the acknowledgement."""

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.server.token()}"}
        try:
            with httpx.Client(base_url=self.server.url, headers=headers, timeout=20) as client:
                for n in range(self.limit):
                    self.in_flight = [b"rest-%d-%d|" % (n, i) + os.urandom(n % 500) for i in range(2)]
                    reply = client.post(f"/data/{self.sid}", files=[("f", ("a", self.in_flight[0])),
                                                                    ("f", ("b", self.in_flight[1]))])
                    if reply.status_code != 200:
                        self.ended = f"HTTP {reply.status_code}: {reply.text[:100]}"
                        return
                    ids = reply.json()
                    assert len(ids) == 2
                    self.acked += list(zip(ids, self.in_flight))
                    self.in_flight = []
        except httpx.HTTPError as exc:
            self.ended = repr(exc)


def stored_entries(server: ServerProcess, sid: str) -> list[tuple[str, bytes]]:
    reply = httpx.get(server.url + f"/data/{sid}", params={"last_entry_id": "0", "count": "100000"},
                      headers={"Authorization": f"Bearer {server.token()}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    header = json.loads(reply.headers["entry-offset"])
    blob = reply.content
    ends = [item[2] for item in header[1:]] + [len(blob)]
    return [(entry_id, blob[start:end]) for (_, entry_id, start), end in zip(header, ends)]


@pytest.fixture
def crashable(tmp_path):
    server = ServerProcess(tmp_path / "data")
    try:
        yield server
    finally:
        server.cleanup()


def check_nothing_acked_was_lost(server: ServerProcess, pusher: AckedPusher) -> None:
    stored = stored_entries(server, pusher.sid)
    acked = pusher.acked
    assert stored[:len(acked)] == acked, f"{pusher.sid}: an acked entry is missing, changed or out of place"
    extra = [data for _, data in stored[len(acked):]]
    # the message in flight at the crash may have been stored without its ack reaching us: all of it or none
    assert extra in ([], pusher.in_flight), f"{pusher.sid}: {len(extra)} unexpected entries after the acked ones"
    ids = [entry_id for entry_id, _ in stored]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("victim", ["server", "redis", "both"])
def test_sigkill_during_acked_pushes_loses_nothing(crashable, victim):
    crashable.start()
    pushers = [AckedPusher(crashable, "imu", batched=False), AckedPusher(crashable, "depth", batched=True),
               RestPusher(crashable, "upload", batched=False)]
    for pusher in pushers:
        pusher.start()
    wait_until(lambda: all(len(p.acked) >= 300 for p in pushers), timeout=60, what="300 acked entries per stream")

    old_redis = crashable.redis_pid()
    if victim == "both":
        # the server first: a live server would restart its Redis at once (see the test below)
        crashable.kill()
        crashable.kill_redis()
    elif victim == "server":
        crashable.kill()
    else:
        crashable.kill_redis()
        # the server restarts its Redis by itself (a push may not even notice the outage)
        wait_until(lambda: crashable.redis_pid() != old_redis and crashable._answers(), timeout=30,
                   what="the server to restart its Redis")
        crashable.redis_pids.add(crashable.redis_pid())
        crashable.kill()  # then the server dies too; the next one joins the restarted Redis
    for pusher in pushers:
        pusher.join(30)
        assert not pusher.is_alive(), "a pusher was still acknowledged after the crash"
        assert pusher.ended is not None, "a pusher stopped without its connection ending"

    crashable.start()
    for pusher in pushers:
        check_nothing_acked_was_lost(crashable, pusher)
    # after the server alone died, its orphaned Redis was joined, not replaced
    assert len(crashable.redis_pids) == (1 if victim == "server" else 2)


def test_pushes_continue_after_the_restart(crashable):
    crashable.start()
    first = AckedPusher(crashable, "cam", batched=False)
    first.limit = 50
    first.run()
    crashable.kill()
    crashable.start()
    second = AckedPusher(crashable, "cam", batched=False)
    second.limit = 50
    second.run()
    stored = stored_entries(crashable, "cam")
    assert stored == first.acked + second.acked


def test_the_server_restarts_its_embedded_redis_when_it_dies(crashable):
    crashable.start()
    token = crashable.token()
    pull_url = f"ws://127.0.0.1:{crashable.port}/data/cam/pull?count=100&token={token}"
    with connect(pull_url, open_timeout=10) as puller:
        first = AckedPusher(crashable, "cam", batched=False)
        first.limit = 50
        first.run()
        old_pid = crashable.redis_pid()
        crashable.kill_redis()
        # pushes while it is down are refused with the reason, not buffered
        with connect(f"ws://127.0.0.1:{crashable.port}/data/cam/push?ack=true&token={token}",
                     open_timeout=10) as pusher:
            pusher.send(b"during the outage")
            try:
                message = pusher.recv(timeout=10)
                refused = None
            except ConnectionClosed as closed:
                message, refused = None, closed.rcvd
        # either refused (Redis still down) or, if the restart already happened, stored and acked
        assert (refused is not None and refused.code == 1011) or (message and message.count("-") == 1)
        wait_until(lambda: crashable._answers() and crashable.redis_pid() != old_pid, timeout=30,
                   what="the server to restart its Redis")
        crashable.redis_pids.add(crashable.redis_pid())
        assert crashable.process.poll() is None, "the server itself kept running"
        second = AckedPusher(crashable, "cam", batched=False)
        second.limit = 50
        second.run()
        expected = first.acked + ([] if message is None else [(message, b"during the outage")]) + second.acked
        received = []
        while len(received) < len(expected):
            header = json.loads(puller.recv(timeout=20))
            blob = puller.recv(timeout=20)
            ends = [item[2] for item in header[1:]] + [len(blob)]
            received += [(entry_id, blob[start:end]) for (_, entry_id, start), end in zip(header, ends)]
    assert received == expected
    assert stored_entries(crashable, "cam") == expected
