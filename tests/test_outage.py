"""Redis stopped mid-stream and restarted: clear refusals meanwhile, then everything resumes by itself."""
import os
import signal
import subprocess

import httpx
import pytest

from ptgstore.testing import RedisServer, wait_until
from support.servers import live_server, make_settings
from support.ws import expect_close, read_delivery, ws_connect


class DurableRedis(RedisServer):
    """A private redis-server with an fsync-always append-only log, restartable on the same port."""

    def start(self) -> "DurableRedis":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, what=f"redis-server on port {self.port}")
        return self

    def crash(self) -> None:
        """SIGKILL: no chance to flush or say goodbye, like a crashed or OOM-killed Redis."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None


@pytest.fixture
def durable_redis(tmp_path):
    server = DurableRedis(tmp_path / "redis").start()
    yield server
    server.stop()


def push_acked(ws, payload: bytes) -> str:
    ws.send(payload)
    return ws.recv(timeout=10)


def ping(live):
    return httpx.get(live.url + "/ping", timeout=10)


@pytest.mark.slow
def test_redis_outage_mid_stream(tmp_path, durable_redis):
    settings = make_settings(tmp_path, durable_redis.url)
    before = [b"before-%d-" % i + os.urandom(200) for i in range(20)]
    after = [b"after-%d-" % i + os.urandom(200) for i in range(20)]
    with live_server(settings) as live, \
            ws_connect(live, "/data/cam/pull", last_entry_id="$", count="100") as puller, \
            ws_connect(live, "/data/cam/push", ack="true") as pusher:
        acked = [push_acked(pusher, payload) for payload in before]
        received = []
        while len(received) < len(before):
            received += read_delivery(puller)

        durable_redis.crash()

        # a push during the outage: the socket closes 1011 with the reason, nothing is acked
        pusher.send(b"lost in the outage")
        code, reason = expect_close(pusher)
        assert code == 1011 and "unavailable" in reason, (code, reason)
        down = ping(live)
        assert down.status_code == 503 and "unavailable" in down.json()["detail"]
        with live.http() as http:
            posted = http.post("/data/cam", files={"f": ("f", b"also lost")})
            assert posted.status_code == 503 and "unavailable" in posted.json()["detail"]
            assert http.get("/data/cam", params={"last_entry_id": "0"}).status_code == 503
        with ws_connect(live, "/data/cam/push", ack="true") as late:
            late.send(b"lost too")
            assert expect_close(late)[0] == 1011
        with ws_connect(live, "/data/other/pull") as late_puller:
            code, reason = expect_close(late_puller)
            assert code == 1011 and "unavailable" in reason

        durable_redis.start()
        # the server reconnects by itself: no restart, no operator
        wait_until(lambda: ping(live).status_code == 200, timeout=20, what="/ping to recover")
        assert ping(live).json() is True

        with ws_connect(live, "/data/cam/push", ack="true") as pusher:
            acked += [push_acked(pusher, payload) for payload in after]
        # the pull socket opened before the outage carries on: nothing skipped, nothing repeated
        while len(received) < len(before) + len(after):
            received += read_delivery(puller, timeout=20)
        with pytest.raises(TimeoutError):
            puller.recv(timeout=0.5)  # and nothing more (no repeats of the backlog)

    assert [entry_id for _, entry_id, _ in received] == acked
    assert [data for _, _, data in received] == before + after
    stored = durable_redis.client().xrange("cam")
    assert [(i.decode(), f[b"d"]) for i, f in stored] == list(zip(acked, before + after))


def test_outage_refusals_name_the_cause_and_recover_for_batches(tmp_path, durable_redis):
    settings = make_settings(tmp_path, durable_redis.url)
    with live_server(settings) as live:
        with ws_connect(live, "/data/*/push", ack="true") as pusher:
            pusher.send('[["a", 0], ["b", 3]]')
            pusher.send(b"abcdef")
            first = pusher.recv(timeout=10).split(",")
        durable_redis.crash()
        with ws_connect(live, "/data/*/push", ack="true") as pusher:
            pusher.send('[["a", 0], ["b", 3]]')
            pusher.send(b"ghijkl")
            code, reason = expect_close(pusher)
            assert code == 1011 and reason.startswith("store unavailable")
        durable_redis.start()
        wait_until(lambda: ping(live).status_code == 200, timeout=20, what="/ping to recover")
        with ws_connect(live, "/data/*/push", ack="true") as pusher:
            pusher.send('[["a", 0], ["b", 3]]')
            pusher.send(b"mnopqr")
            second = pusher.recv(timeout=10).split(",")
    client = durable_redis.client()
    assert [f[b"d"] for _, f in client.xrange("a")] == [b"abc", b"mno"]
    assert [f[b"d"] for _, f in client.xrange("b")] == [b"def", b"pqr"]
    assert [i.decode() for i, _ in client.xrange("a")] == [first[0], second[0]]


def test_server_started_before_its_redis_serves_once_redis_is_up(tmp_path):
    redis_server = DurableRedis(tmp_path / "late-redis")  # not started yet
    settings = make_settings(tmp_path, redis_server.url)
    try:
        with live_server(settings) as live:
            down = ping(live)
            assert down.status_code == 503 and "unavailable" in down.json()["detail"]
            with ws_connect(live, "/data/cam/pull") as puller:
                code, reason = expect_close(puller)
                assert code == 1011 and "unavailable" in reason
            redis_server.start()
            wait_until(lambda: ping(live).status_code == 200, timeout=20, what="/ping once Redis is up")
            with ws_connect(live, "/data/cam/push", ack="true") as pusher:
                entry_id = push_acked(pusher, b"first")
            with live.http() as http:
                reply = http.get("/data/cam", params={"last_entry_id": "0"})
            assert reply.content == b"first" and entry_id in reply.headers["entry-offset"]
    finally:
        if redis_server.process is not None:
            redis_server.stop()


def test_a_pull_reading_history_waits_out_the_outage(tmp_path, durable_redis):
    settings = make_settings(tmp_path, durable_redis.url)
    history = [b"history-%d" % i for i in range(30)]
    with live_server(settings) as live:
        with ws_connect(live, "/data/cam/push", ack="true") as pusher:
            ids = [push_acked(pusher, payload) for payload in history]
        # one entry per delivery, each acknowledged: the socket works through the history slowly
        with ws_connect(live, "/data/cam/pull", last_entry_id="0", count="1", ack="true") as puller:
            received = []
            for _ in range(10):
                received += read_delivery(puller)
                puller.send("ack")
            durable_redis.crash()
            durable_redis.start()
            while len(received) < len(history):
                received += read_delivery(puller, timeout=20)
                puller.send("ack")
    assert [(entry_id, data) for _, entry_id, data in received] == list(zip(ids, history))


@pytest.mark.slow
def test_a_stalled_redis_fails_pushes_after_the_timeout_then_recovers(tmp_path, durable_redis):
    """Redis stopped (not dead: no reset, no EOF): a push waits PTGSTORE_REDIS_TIMEOUT, then closes 1011."""
    settings = make_settings(tmp_path, durable_redis.url, redis_timeout=1)
    with live_server(settings) as live:
        with ws_connect(live, "/data/cam/push", ack="true") as pusher:
            first = push_acked(pusher, b"before")
            durable_redis.process.send_signal(signal.SIGSTOP)
            try:
                pusher.send(b"during")
                code, reason = expect_close(pusher, timeout=10)
            finally:
                durable_redis.process.send_signal(signal.SIGCONT)
        assert code == 1011 and reason.startswith("store unavailable")
        with ws_connect(live, "/data/cam/push", ack="true") as pusher:
            second = push_acked(pusher, b"after")
    # what was refused may or may not have been stored (Redis got it, then stalled): never acked twice
    client = durable_redis.client()
    ids = [i.decode() for i, _ in client.xrange("cam")]
    assert ids[0] == first and ids[-1] == second and len(ids) in (2, 3)
