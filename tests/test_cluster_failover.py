"""A master replaced by its replica (CLUSTER FAILOVER) under load: nothing acknowledged lost or repeated."""
from __future__ import annotations

import asyncio

import pytest

from cluster import RedisCluster
from conftest import live_server, make_settings, wait_until
from test_cluster_moves import HZ, puller, pusher

SECONDS = 4
PULLERS = 3


@pytest.fixture
def replicated(tmp_path_factory):
    """3 masters with a replica each (the topology changes: one per test)."""
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
