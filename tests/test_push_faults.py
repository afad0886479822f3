"""Pushes that survive the network: the public Python client pushing 30 Hz frames through a proxy
that cuts connections at random moments (acks written by the server and never read included),
through a graceful restart and a SIGKILL of `ptgstore serve`, and across two processes. Every
returned id is stored exactly once, in order, and the count equals what was pushed."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from ptgstore.testing import free_port, wait_until
from support.servers import ServeProcess, live_server, make_settings
from ptgstore.testproxy import CuttingProxy
from ptgstore.client import AsyncClient, Client

pytestmark = pytest.mark.slow  # faults injected through proxies

HZ = 30


def frame(i: int) -> bytes:
    return b"frame %06d " % i + os.urandom(4096 + (i % 7) * 3000)


def check_exactly_once(rdb, sid: str, ids: list[str], frames: list[bytes]) -> None:
    stored = [(entry_id.decode(), fields[b"d"]) for entry_id, fields in rdb.xrange(sid)]
    assert len(ids) == len(frames) == len(stored)
    assert stored == list(zip(ids, frames))  # each once, in order, byte for byte


async def push_paced(client: AsyncClient, sid: str, frames: list[bytes]):
    """Push one frame per tick at HZ; the ids returned and the pusher's summary."""
    ids: list[str] = []
    async with client.pusher() as pusher:
        tick = time.monotonic()
        for data in frames:
            ids += await pusher.push(sid, [data])
            tick += 1 / HZ
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
    return ids, pusher.summary


def test_async_pusher_through_random_cuts_stores_every_frame_once(server, rdb):
    frames = [frame(i) for i in range(3 * HZ)]
    with CuttingProxy([server.port], drop_replies=0.1, seed=1) as proxy, proxy.chaos((0.1, 0.4)):
        async def main():
            async with AsyncClient(proxy.url, token=server.token()) as client:
                return await push_paced(client, "cam", frames)

        ids, summary = asyncio.run(main())
    check_exactly_once(rdb, "cam", ids, frames)
    assert proxy.cuts + proxy.dropped >= 3 and summary.reconnects >= 3
    assert summary.resends >= proxy.dropped >= 1  # an ack lost after the server stored: resent, stored once
    assert (summary.batches, summary.entries) == (len(frames), len(frames))


def test_blocking_pusher_through_random_cuts_stores_every_frame_once(server, rdb):
    frames = [frame(i) for i in range(2 * HZ)]
    ids = []
    with CuttingProxy([server.port], drop_replies=0.15, seed=2) as proxy, proxy.chaos((0.1, 0.3)), \
            Client(proxy.url, token=server.token()) as client, client.pusher() as pusher:
        for data in frames:
            ids += pusher.push("cam", data)
            time.sleep(1 / HZ)  # the pace of a camera, not a wait for anything
    check_exactly_once(rdb, "cam", ids, frames)
    assert pusher.summary.reconnects >= 2 and pusher.summary.resends >= 1


def test_a_first_connection_cut_while_opening_is_retried(server, rdb):
    """Accepted, then dropped before the handshake's answer (a bad network, not a wrong URL): retried."""
    with CuttingProxy([free_port(), server.port]) as proxy, Client(proxy.url, token=server.token()) as client, \
            client.pusher() as pusher:
        ids = pusher.push("cam", b"x")  # the first connection goes to a port nobody listens on: the proxy drops it
    assert proxy.routed[:2] == [proxy.backends[0], server.port]
    assert [(i.decode(), f[b"d"]) for i, f in rdb.xrange("cam")] == [(ids[0], b"x")]


class PacedPusher(threading.Thread):
    """The blocking client pushing one frame per tick until told to stop (or `most` frames)."""

    def __init__(self, url: str, token: str, sid: str, most: int = 20 * HZ):
        super().__init__(daemon=True)
        self.url, self.token, self.sid, self.most = url, token, sid, most
        self.frames: list[bytes] = []
        self.ids: list[str] = []
        self.summary = None
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with Client(self.url, token=self.token) as client, client.pusher() as pusher:
                while not self.stop.wait(1 / HZ) and len(self.frames) < self.most:
                    data = frame(len(self.frames))
                    self.ids += pusher.push(self.sid, data)
                    self.frames.append(data)
                self.summary = pusher.summary
        except BaseException as exc:  # reported by the test
            self.error = exc

    def pushed_at_least(self, count: int) -> None:
        start = len(self.ids)
        wait_until(lambda: len(self.ids) >= start + count or self.error or not self.is_alive(), timeout=30,
                   what=f"{count} more frames")
        assert self.error is None, repr(self.error)

    def finish(self) -> None:
        self.stop.set()
        self.join(30)
        assert not self.is_alive() and self.error is None, repr(self.error)


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_pusher_carries_on_through_a_server_restart(tmp_path, rdb, redis_server, stop):
    """`ptgstore serve` stopped (gracefully: 1001 after acking; or killed mid-batch) and started again
    on another port behind the same address: the pusher waits, resends, and stores every frame once."""
    env = {"PTGSTORE_SECRET": "restart-test-secret-0123456789abcdef"}
    first = ServeProcess(tmp_path / "a", "--redis-url", redis_server.url, env=env).wait_ready()
    second = None
    try:
        with CuttingProxy([first.port]) as proxy:
            pusher = PacedPusher(proxy.url, first.token(), "cam")
            pusher.start()
            pusher.pushed_at_least(HZ // 2)
            if stop == "sigterm":
                assert first.terminate() in (0, -signal.SIGTERM)
            else:
                first.process.kill()
                first.process.wait(10)
            second = ServeProcess(tmp_path / "b", "--redis-url", redis_server.url, env=env)
            proxy.set_backends([second.port])
            second.wait_ready()
            pusher.pushed_at_least(HZ // 2)
            pusher.finish()
    finally:
        first.terminate()
        if second is not None:
            second.terminate()
    check_exactly_once(rdb, "cam", pusher.ids, pusher.frames)
    assert pusher.summary.reconnects >= 1


def test_pusher_waits_for_a_server_restarting_on_its_port(tmp_path, rdb, redis_server):
    """No proxy: while the server is down its port refuses connections; the pusher keeps trying."""
    settings = make_settings(tmp_path, redis_server.url)
    port = free_port()
    with live_server(settings, port) as first:
        pusher = PacedPusher(first.url, first.token(), "cam")
        pusher.start()
        pusher.pushed_at_least(HZ // 2)
    with live_server(settings, port):  # (stopped above: uvicorn shut down, sockets closed with 1001)
        pusher.pushed_at_least(HZ // 2)
        pusher.finish()
    check_exactly_once(rdb, "cam", pusher.ids, pusher.frames)
    assert pusher.summary.reconnects >= 1


def test_pusher_switching_between_two_processes_stores_once(tmp_path, rdb, redis_server):
    """Every reconnection lands on the other `ptgstore serve` process of the same Redis."""
    env = {"PTGSTORE_SECRET": "switch-test-secret-0123456789abcdef"}
    servers = [ServeProcess(tmp_path / name, "--redis-url", redis_server.url, env=env) for name in "ab"]
    try:
        for s in servers:
            s.wait_ready()
        with CuttingProxy([s.port for s in servers], drop_replies=0.1, seed=3) as proxy, proxy.chaos((0.1, 0.3)):
            pusher = PacedPusher(proxy.url, servers[0].token(), "cam", most=3 * HZ)
            pusher.start()
            pusher.join(60)
            pusher.finish()
    finally:
        for s in servers:
            s.terminate()
    check_exactly_once(rdb, "cam", pusher.ids, pusher.frames)
    assert len(pusher.frames) == 3 * HZ
    assert {servers[0].port, servers[1].port} <= set(proxy.routed) and pusher.summary.reconnects >= 2


def test_cli_simulate_carries_on_through_cuts(server, rdb):
    from test_commands import ok, ptgstore

    with CuttingProxy([server.port], drop_replies=0.1, seed=4) as proxy, proxy.chaos((0.1, 0.3)):
        done = ok(ptgstore(server, "simulate", "--duration", "2", "--device", "hl2", "--depth-hz", "10",
                           env_extra={"PTGSTORE_URL": proxy.url}))
    summary = done.stderr.decode()
    assert "Traceback" not in summary
    camera = [fields[b"d"] for _, fields in rdb.xrange("hl2:main")]
    numbers = [int(data.split(b"ptgstore simulate hl2 frame ")[1].split(b"\xff")[0]) for data in camera]
    assert numbers == list(range(len(camera)))  # each frame once, in order
    for sid in ("hl2:main", "hl2:depthlt", "hl2:imu"):
        assert f"{sid}: {rdb.xlen(sid)} entries" in summary  # as many stored as it says it pushed
    reconnects = int(summary.split("connection: ")[1].split(" reconnects")[0])
    assert reconnects >= 1


def test_cli_push_resends_a_batch_whose_ack_was_lost(server, rdb, tmp_path):
    from test_commands import ok, ptgstore

    paths = []
    for i in range(20):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(b"file %d " % i + os.urandom(1000))
    with CuttingProxy([server.port]) as proxy:
        proxy.drop_next = 2  # the first two acks never arrive: the batch goes three times
        done = ok(ptgstore(server, "push", "cam", *map(str, paths), "--ids", env_extra={"PTGSTORE_URL": proxy.url}))
    ids = done.stdout.decode().split()
    assert [(i.decode(), f[b"d"]) for i, f in rdb.xrange("cam")] == list(zip(ids, [p.read_bytes() for p in paths]))
    assert "connection: 2 reconnects, 2 batches resent" in done.stderr.decode()


@pytest.mark.cluster
def test_pusher_through_cuts_on_a_redis_cluster(tmp_path, cluster):
    """On a 3-master cluster each stream's record is in its group's slot: still exactly once."""
    groups = [cluster.group_on(i) for i in range(len(cluster.masters))]
    frames = [frame(i) for i in range(2 * HZ)]
    with live_server(make_settings(tmp_path, cluster.url, redis_cluster=True)) as live, \
            CuttingProxy([live.port], drop_replies=0.1, seed=6) as proxy, proxy.chaos((0.1, 0.3)):
        async def main():
            async with AsyncClient(proxy.url, token=live.token()) as client:
                async with client.pusher() as pusher:  # one producer, its frames spread over the masters
                    ids = []
                    for i, data in enumerate(frames):
                        ids += await pusher.push(f"{groups[i % 3]}:cam", [data])
                        await asyncio.sleep(1 / HZ)
                return ids, pusher.summary

        ids, summary = asyncio.run(main())
        store = live.app.state.store
        for g, group in enumerate(groups):
            sid = f"{group}:cam"
            node = cluster.owner(store.key(sid)).client
            stored = [(i.decode(), f[b"d"]) for i, f in node.xrange(store.key(sid))]
            assert stored == list(zip(ids[g::3], frames[g::3]))
    assert summary.reconnects >= 1
