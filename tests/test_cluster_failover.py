"""A master replaced by its replica (CLUSTER FAILOVER) under load: nothing acknowledged lost or repeated."""
from __future__ import annotations

import asyncio

import pytest

from support.cluster import RedisCluster, needs_cluster_support
from ptgstore.testing import wait_until
from support.servers import live_server, make_settings
from test_cluster_moves import HZ, puller, pusher

pytestmark = pytest.mark.cluster

SECONDS = 4
PULLERS = 3


@pytest.fixture
def replicated(tmp_path_factory):
    """3 masters with a replica each (the topology changes: one per test)."""
    needs_cluster_support()
    cluster = RedisCluster(tmp_path_factory.mktemp("replicated"), replicas=True)
    yield cluster
    cluster.stop()


def _replica_of(cluster, master):
    for node in cluster.nodes:
        info = node.client.info("replication")
        if info["role"] == "slave" and int(info["master_port"]) == master.port:
            return node
    raise AssertionError(f"no replica of {master.port}")


def test_a_coordinated_failover_under_load_loses_nothing(tmp_path, replicated):
    cluster = replicated
    with live_server(make_settings(tmp_path, cluster.url, redis_cluster=True)) as server:
        sid = f"{cluster.group_on(1)}:cam"
        key = server.app.state.store.key(sid)
        master = cluster.owner(key)
        replica = _replica_of(cluster, master)
        wait_until(lambda: replica.client.info("replication")["master_link_status"] == "up", what="replication")
        token = server.token()
        count = HZ * SECONDS

        async def scenario():
            pulls = [asyncio.create_task(puller(f"{server.ws_url}/data/{sid}/pull?token={token}&last_entry_id=0"
                                                f"&count=64", count)) for _ in range(PULLERS)]
            push = asyncio.create_task(pusher(f"{server.ws_url}/data/{sid}/push?token={token}&ack=true", count))
            await asyncio.sleep(1)  # (load shaping: the failover happens with entries flowing)
            # the replica catches up with its master, then takes over; the master becomes its replica
            await asyncio.to_thread(replica.client.execute_command, "CLUSTER", "FAILOVER")
            acked = await asyncio.wait_for(push, 60)
            pulled = await asyncio.wait_for(asyncio.gather(*pulls), 60)
            return acked, pulled

        acked, pulled = asyncio.run(scenario())
        assert cluster.owner(key) is replica  # the replica did take over
        assert len(acked) == count == len(set(acked))
        for got in pulled:
            assert got == acked
        with server.http() as http:
            assert http.get(f"/streams/{sid}").json()["length"] == count


def test_a_master_killed_is_replaced_and_its_streams_served_again(tmp_path, replicated):
    """A crash (SIGKILL) of a master: its replica takes over after the node timeout; the same
    process then serves the stream again (pushes refused meanwhile with 1011 stored nothing), and a
    pull open across the crash goes on with nothing repeated. Entries acked before the crash and
    replicated (checked here with WAIT) survive; docs/scaling.md says what an unreplicated one can lose."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from support.ws import read_delivery

    cluster = replicated
    with live_server(make_settings(tmp_path, cluster.url, redis_cluster=True, redis_timeout=5)) as server:
        sid = f"{cluster.group_on(0)}:cam"
        key = server.app.state.store.key(sid)
        master = cluster.owner(key)
        replica = _replica_of(cluster, master)
        token = server.token()
        base = f"{server.ws_url}/data/{sid}"
        with connect(f"{base}/push?token={token}&ack=true", open_timeout=10) as pusher:
            before = []
            for i in range(5):
                pusher.send(b"before %d" % i)
                before.append(pusher.recv(timeout=10))
        assert master.client.execute_command("WAIT", 1, 5000) == 1  # on the replica too
        with connect(f"{base}/pull?token={token}&last_entry_id=0&count=100", open_timeout=10) as puller:
            got = read_delivery(puller)
            master.process.kill()
            master.process.wait(10)
            wait_until(lambda: replica.client.info("replication")["role"] == "master", timeout=30,
                       what="the replica to take over")

            def pushed():
                try:
                    with connect(f"{base}/push?token={token}&ack=true", open_timeout=10) as ws:
                        ws.send(b"after")
                        return ws.recv(timeout=10)
                except (ConnectionClosed, TimeoutError):
                    return None  # refused while the cluster settles: stored nothing

            after = wait_until(pushed, timeout=30, interval=0.2, what="a push to be acked again")
            while len(got) < 6:
                got += read_delivery(puller, timeout=20)
        assert [e[1] for e in got] == before + [after]
        assert [e[2] for e in got] == [b"before %d" % i for i in range(5)] + [b"after"]
