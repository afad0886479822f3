"""Two `ptgstore serve` processes on one Redis Cluster behind a round-robin TCP proxy."""
from __future__ import annotations

import secrets

import httpx
import pytest

from ptgstore.testing import wait_until
from ptgstore.testproxy import RoundRobinProxy
from support.servers import ServeProcess
from support.ws import read_delivery
from websockets.sync.client import connect

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # two `ptgstore serve` processes on a cluster


def _env(cluster, secret: str) -> dict:
    return {"PTGSTORE_REDIS_URL": cluster.url, "PTGSTORE_REDIS_CLUSTER": "true", "PTGSTORE_SECRET": secret}


@pytest.fixture
def two(tmp_path, cluster):
    secret = secrets.token_hex(32)  # shared by every process: tokens of one are accepted by all
    with ServeProcess(tmp_path / "a", env=_env(cluster, secret)) as a, \
            ServeProcess(tmp_path / "b", env=_env(cluster, secret)) as b:
        a.wait_ready()
        b.wait_ready()
        with RoundRobinProxy([a.port, b.port]) as proxy:
            yield a, b, proxy


def _ws(base: str, path: str, token: str, **query):
    qs = "&".join(f"{k}={v}" for k, v in {"token": token, **query}.items())
    return connect(f"{base}{path}?{qs}", open_timeout=10, max_size=None, compression=None)


def test_a_push_through_one_is_delivered_live_to_a_pull_on_the_other(two, cluster):
    a, b, proxy = two
    token = a.token()  # minted by one, used on both
    sid = f"{cluster.group_on(1)}:cam"
    with _ws(proxy.ws_url, f"/data/{sid}/pull", token) as puller, \
            _ws(proxy.ws_url, f"/data/{sid}/push", token, ack="true") as pusher:
        assert set(proxy.routed) == {a.port, b.port}  # the two sockets reached different processes
        ids = []
        for i in range(5):
            pusher.send(b"live %d" % i)
            ids.append(pusher.recv(timeout=10))
        got = []
        while len(got) < 5:
            got += read_delivery(puller)
    assert got == [(sid, entry_id, b"live %d" % i) for i, entry_id in enumerate(ids)]


def test_tokens_of_one_are_accepted_by_the_other(two):
    a, b, _ = two
    for issuer, other in ((a, b), (b, a)):
        reply = httpx.get(other.url + "/streams", headers={"Authorization": f"Bearer {issuer.token()}"}, timeout=10)
        assert reply.status_code == 200


def test_a_delete_through_one_is_never_served_by_the_other(two, cluster):
    a, b, _ = two
    token = a.token()
    sid = f"{cluster.group_on(2)}:gone"
    headers = {"Authorization": f"Bearer {token}"}
    with _ws(a.ws_url, f"/data/{sid}/push", token, ack="true") as pusher:
        pusher.send(b"old")
        pusher.recv(timeout=10)
    with _ws(a.ws_url, f"/data/{sid}/pull", token, last_entry_id="0") as puller:  # a follows it
        assert [e[2] for e in read_delivery(puller)] == [b"old"]
        assert httpx.delete(f"{b.url}/streams/{sid}", headers=headers, timeout=10).status_code == 200
        reply = httpx.get(f"{a.url}/data/{sid}", params={"last_entry_id": "0"}, headers=headers, timeout=10)
        assert reply.content == b""
        with _ws(b.ws_url, f"/data/{sid}/push", token, ack="true") as pusher:
            pusher.send(b"new")
            pusher.recv(timeout=10)
        assert [e[2] for e in read_delivery(puller)] == [b"new"]  # never the deleted one again
    with _ws(a.ws_url, f"/data/{sid}/pull", token, last_entry_id="0") as fresh:
        assert [e[2] for e in read_delivery(fresh)] == [b"new"]


def test_a_process_with_another_secret_says_so_at_start_up(tmp_path, cluster):
    with ServeProcess(tmp_path / "a", env=_env(cluster, secrets.token_hex(32))) as a:
        a.wait_ready()
        with ServeProcess(tmp_path / "b", env=_env(cluster, secrets.token_hex(32))) as b:
            b.wait_ready()
            wait_until(lambda: "different secret" in b.output, what="the warning")
            assert "PTGSTORE_SECRET" in b.output
        assert "different secret" not in a.output
