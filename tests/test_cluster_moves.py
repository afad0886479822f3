"""A live stream's slot moved to another master under load: nothing acknowledged lost or repeated."""
from __future__ import annotations

import asyncio
import time

import msgpack
import orjson
import pytest
from redis.crc import key_slot
from websockets.asyncio.client import connect

from ptgstore.producers import OUTSIDE_LUA
from support.servers import live_server, make_settings

pytestmark = pytest.mark.cluster

HZ = 30
SECONDS = 4
PULLERS = 4


@pytest.fixture
def cserver(tmp_path, cluster):
    with live_server(make_settings(tmp_path, cluster.url, redis_cluster=True)) as live:
        yield live


def move_slot(cluster, slot: int, source, target) -> None:
    """Reshard one slot the way redis-cli does: IMPORTING/MIGRATING, MIGRATE its keys, then the owner."""
    target.client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.id)
    source.client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.id)
    time.sleep(0.3)  # (load shaping, not synchronisation: commands meet the slot half-moved)
    while True:
        keys = source.client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)
        if not keys:
            break
        source.client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        time.sleep(0.2)
    for node in (target, source, *cluster.masters):
        node.client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.id)


async def pusher(url: str, count: int, size: int = 0) -> list[str]:
    ids = []
    async with connect(url, open_timeout=10, compression=None) as ws:
        start = time.monotonic()
        for i in range(count):
            await ws.send((b"frame %d " % i).ljust(size, b"."))
            ids.append(await asyncio.wait_for(ws.recv(), 10))
            await asyncio.sleep(max(0.0, start + (i + 1) / HZ - time.monotonic()))
    return ids


async def puller(url: str, want: int) -> list[str]:
    got = []
    async with connect(url, open_timeout=10, compression=None, max_size=None) as ws:
        while len(got) < want:
            header = await asyncio.wait_for(ws.recv(), 15)
            blob = await asyncio.wait_for(ws.recv(), 15)
            items = msgpack.unpackb(header) if isinstance(header, bytes) else orjson.loads(header)
            starts = [item[2] for item in items] + [len(blob)]
            for (sid, entry_id, start), end in zip(items, starts[1:]):
                assert blob[start:end].startswith(b"frame ")
                got.append(entry_id)
    return got


@pytest.mark.parametrize("producer", [False, True], ids=["plain", "producer"])
def test_a_live_streams_slot_moves_to_another_master(cserver, cluster, producer):
    """With a producer named, the frames are large: each is its XADD and a script in one MULTI
    (idempotent_add_large.lua), redirected whole while the slot moves."""
    group = cluster.group_on(0)
    sid = f"{group}:cam"
    key = cserver.app.state.store.key(sid)
    source = cluster.owner(key)
    target = next(m for m in cluster.masters if m is not source)
    token = cserver.token()
    count = HZ * SECONDS

    async def scenario():
        pulls = [asyncio.create_task(puller(f"{cserver.ws_url}/data/{sid}/pull?token={token}&last_entry_id=0"
                                            f"&count=64", count)) for _ in range(PULLERS)]
        named = "&producer=p&seq=1" if producer else ""
        push = asyncio.create_task(pusher(f"{cserver.ws_url}/data/{sid}/push?token={token}&ack=true{named}", count,
                                          OUTSIDE_LUA if producer else 0))
        await asyncio.sleep(1)  # (load shaping: the move happens with entries flowing)
        await asyncio.to_thread(move_slot, cluster, key_slot(key.encode()), source, target)
        acked = await asyncio.wait_for(push, 60)
        pulled = await asyncio.wait_for(asyncio.gather(*pulls), 60)
        return acked, pulled

    acked, pulled = asyncio.run(scenario())
    assert cluster.owner(key) is target  # the stream did move
    if producer:
        record = cserver.app.state.store.keys.producer("p", "test", sid)
        assert cluster.owner(record) is target and target.client.zcard(record) == 64  # moved with it
    assert len(acked) == count == len(set(acked))
    for got in pulled:
        assert got == acked  # every acknowledged entry, once, in order
    with cserver.http() as http:
        info = http.get(f"/streams/{sid}").json()
        assert info["length"] == count


def test_a_producers_large_frame_follows_its_slot_half_moved(cluster):
    """A large frame's MULTI (its XADD and idempotent_add_large.lua) meets its slot migrating, its keys
    already on the importing master: the whole transaction is sent there after ASKING, and a resend
    finds the record there."""
    from ptgstore.producers import Producers
    from ptgstore.store import Store

    async def scenario():
        store = Store(cluster.url, cluster=True)
        producers = Producers(store, 3600, 64)
        sid = f"{cluster.group_on(0)}:cam"
        key, record = store.key(sid), store.keys.producer("p", "acct", sid)
        frame = b"x" * OUTSIDE_LUA
        try:
            first, repeated = await producers.add("p", "acct", 1, [(sid, "*", frame)])
            assert not repeated
            source = cluster.owner(key)
            target = next(m for m in cluster.masters if m is not source)
            slot = key_slot(key.encode())
            target.client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.id)
            source.client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.id)
            source.client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", key, record)
            again, repeated = await producers.add("p", "acct", 1, [(sid, "*", frame)])  # a resend: ASK
            assert (again, repeated) == (first, True)
            second, repeated = await producers.add("p", "acct", 2, [(sid, "*", frame)])
            assert not repeated
            for node in (target, source, *cluster.masters):  # the move finished
                node.client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.id)
            return target, key, first + second
        finally:
            await store.close()

    target, key, ids = asyncio.run(scenario())
    assert [i.decode() for i, _ in target.client.xrange(key)] == ids  # each once, on the importing master
