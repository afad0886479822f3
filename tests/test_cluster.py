"""The protocol on a real 3-master Redis Cluster: every route, streams on every master, batches by group."""
from __future__ import annotations

import orjson
import pytest

from ptgstore.testing import wait_until
from support.servers import live_server, make_settings
from support.ws import expect_close, read_delivery, ws_connect

pytestmark = pytest.mark.cluster


@pytest.fixture
def groups(cluster):
    """One group name per master: streams `<group>:<name>` land on master 0, 1 and 2."""
    return [cluster.group_on(i) for i in range(len(cluster.masters))]


@pytest.fixture
def cserver(tmp_path, cluster):
    with live_server(make_settings(tmp_path, cluster.url, redis_cluster=True)) as live:
        yield live


def test_streams_of_each_group_live_on_their_master(cserver, cluster, groups):
    store = cserver.app.state.store
    owners = {cluster.owner(store.key(f"{g}:{name}")).port for g in groups for name in ("main", "depth")}
    assert len(owners) == 3  # spread over the three masters
    for g in groups:  # and the keys of one group (stream, metadata, epoch) share one slot
        keys = [store.key(f"{g}:main"), store.keys.meta(f"{g}:main"), store.epoch_key(f"{g}:depth")]
        assert len({store.connections.slot(k) for k in keys}) == 1


def test_push_then_pull_and_rest_on_every_master(cserver, groups):
    with cserver.http() as http:
        for g in groups:
            sid = f"{g}:cam"
            with ws_connect(cserver, f"/data/{sid}/pull", last_entry_id="0", count="10") as puller:
                with ws_connect(cserver, f"/data/{sid}/push", ack="true") as pusher:
                    ids = []
                    for payload in (b"one", b"\x00two", b"three" * 1000):
                        pusher.send(payload)
                        ids.append(pusher.recv(timeout=10))
                got = []
                while len(got) < 3:
                    got += read_delivery(puller)
            assert got == [(sid, ids[0], b"one"), (sid, ids[1], b"\x00two"), (sid, ids[2], b"three" * 1000)]
            reply = http.get(f"/data/{sid}", params={"last_entry_id": "0", "count": "10"})
            assert reply.status_code == 200 and reply.content == b"one\x00twothree" + b"three" * 999
            assert http.get(f"/streams/{sid}").json()["length"] == 3
        assert http.get("/streams").json() == sorted(f"{g}:cam" for g in groups)


def test_pull_across_groups_and_masters_is_in_time_order(cserver, groups):
    a, b = f"{groups[0]}:imu", f"{groups[1]}:imu"
    with ws_connect(cserver, f"/data/{a}+{b}/pull", count="10") as puller:
        wait_until(lambda: len(cserver.app.state.hub.followers) == 2, what="the followers")
        sent = []
        for i in range(6):
            sid = (a, b)[i % 2]
            with ws_connect(cserver, f"/data/{sid}/push", ack="true") as pusher:
                pusher.send(b"%d" % i)
                sent.append((sid, pusher.recv(timeout=10), b"%d" % i))
        got = []
        while len(got) < 6:
            got += read_delivery(puller)
    assert sorted(got, key=lambda e: tuple(map(int, e[1].split("-")))) == got
    assert sorted(got) == sorted(sent)


def test_batch_in_one_group_is_stored_together(cserver, groups):
    g = groups[2]
    with ws_connect(cserver, "/data/*/push", batch="true", ack="true") as ws:
        ws.send(orjson.dumps([[f"{g}:main", 0], [f"{g}:depth", 2], [f"{g}:main", 3]]).decode())
        ws.send(b"MMDMM")
        ids = ws.recv(timeout=10).split(",")
    assert len(ids) == 3
    with cserver.http() as http:
        assert http.get(f"/streams/{g}:main").json()["length"] == 2
        assert http.get(f"/streams/{g}:depth").json()["length"] == 1


def test_batch_across_groups_is_refused_naming_the_rule(cserver, groups):
    a, b = f"{groups[0]}:main", f"{groups[1]}:main"
    with ws_connect(cserver, "/data/*/push", batch="true", ack="true") as ws:
        ws.send(orjson.dumps([[a, 0], [b, 1]]).decode())
        ws.send(b"ab")
        code, reason = expect_close(ws)
    assert code == 1007 and "one group" in reason and len(reason.encode()) <= 123
    with cserver.http() as http:
        assert http.get("/streams").json() == []  # nothing stored
        # the same rule over REST: a multipart upload to several groups is a 400
        reply = http.post("/data/*", files=[("e", (a, b"x")), ("e", (b, b"y"))])
        assert reply.status_code == 400 and "one group" in reply.json()["detail"]
        # stream ids without the separator are one group, as they were one Redis
        ok = http.post("/data/*", files=[("e", ("main", b"x")), ("e", ("depthlt", b"y"))])
        assert ok.status_code == 200 and len(ok.json()) == 2


def test_metadata_and_retention_per_stream(cserver, groups):
    sid = f"{groups[1]}:short"
    with cserver.http() as http:
        assert http.put(f"/streams/{sid}", json={"max_len": 5, "fps": 30}).json() == {"max_len": 5, "fps": 30}
        assert http.get("/streams").json() == [sid]
        for _ in range(3):
            http.post(f"/data/{sid}", files=[("e", ("e", b"x" * 10)) for _ in range(100)])
        info = http.get(f"/streams/{sid}").json()
        assert info["meta"] == {"max_len": 5, "fps": 30} and 5 <= info["length"] < 300
        summary = http.get("/status/streams").json()
        assert [s["sid"] for s in summary["streams"]] == [sid] and summary["streams"][0]["max_len"] == 5


def test_delete_is_never_served_again(cserver, groups):
    sids = [f"{g}:gone" for g in groups]
    with cserver.http() as http:
        for sid in sids:
            http.post(f"/data/{sid}", files=[("e", ("e", b"old"))])
        with ws_connect(cserver, f"/data/{sids[0]}/pull", last_entry_id="0") as puller:
            assert [e[2] for e in read_delivery(puller)] == [b"old"]
            assert http.request("DELETE", f"/streams/{'+'.join(sids)}").status_code == 200
            http.post(f"/data/{sids[0]}", files=[("e", ("e", b"new"))])
            assert [e[2] for e in read_delivery(puller)] == [b"new"]
        assert http.get("/streams").json() == [sids[0]]
        assert [e for e in http.get(f"/data/{sids[1]}", params={"last_entry_id": "0"}).content] == []


def test_tokens_ping_and_status_on_the_cluster(cserver):
    token = cserver.token()
    with ws_connect(cserver, "/data/main/push", token=token, ack="true") as ws:
        ws.send(b"x")
        assert ws.recv(timeout=10)
    with cserver.http() as http:
        assert http.get("/ping").json() is True
        status = http.get("/status").json()
        assert status["redis"]["address"].startswith("redis://127.0.0.1:")


def test_an_unreachable_cluster_is_an_outage_not_a_refusal(tmp_path):
    from support.cluster import needs_cluster_support
    from ptgstore.testing import free_port

    needs_cluster_support()

    url = f"redis://127.0.0.1:{free_port()}"
    with live_server(make_settings(tmp_path, url, redis_cluster=True, redis_timeout=2)) as live:
        with live.http() as http:
            assert http.get("/data/main", params={"last_entry_id": "0"}).status_code == 503
            assert http.get("/ping").status_code == 503


def test_dump_from_one_redis_then_load_into_the_cluster(tmp_path, server, rdb, cluster, groups):
    """The way from one Redis to a cluster: `ptgstore dump`, then `ptgstore load`, byte-exact, same ids."""
    from test_commands import ok, ptgstore

    sids = [f"{g}:cam" for g in groups] + ["main"]
    with server.http() as http:
        assert http.put(f"/streams/{sids[0]}", json={"max_len": 5000, "camera": "left"}).status_code == 200
    for n, sid in enumerate(sids):
        for i in range(n + 2):
            rdb.xadd(sid, {"d": b"%s %d" % (sid.encode(), i)})
    expected = {sid: [(i.decode(), f[b"d"]) for i, f in rdb.xrange(sid)] for sid in sids}
    ok(ptgstore(server, "dump", str(tmp_path / "backup")))
    with live_server(make_settings(tmp_path / "c", cluster.url, redis_cluster=True)) as target:
        ok(ptgstore(target, "load", str(tmp_path / "backup")))
        with target.http() as http:
            assert http.get("/streams").json() == sorted(sids)
            assert http.get(f"/streams/{sids[0]}").json()["meta"] == {"max_len": 5000, "camera": "left"}
            for sid, entries in expected.items():
                reply = http.get(f"/data/{sid}", params={"last_entry_id": "0", "count": "10"})
                header = orjson.loads(reply.headers["entry-offset"])
                assert [item[1] for item in header] == [i for i, _ in entries]
                assert reply.content == b"".join(data for _, data in entries)


def test_recording_streams_on_several_masters(tmp_path, cluster, groups):
    """The recorder on a cluster: its state in one slot, streams of several groups and masters read."""
    from test_recordings import push_at, recorded

    settings = make_settings(tmp_path, cluster.url, redis_cluster=True, recording_segment_seconds=1)
    with live_server(settings) as live, live.http() as http:
        streams = {f"{groups[0]}:cam": lambda i: b"cam %d" % i, f"{groups[1]}:imu": lambda i: b"imu %d" % i,
                   "main": lambda i: b"main %d" % i}
        push_at(live, streams, hz=30, count=3)  # before the start: not recorded
        assert http.put("/recordings/start", params={"rec_id": "spread"}).json() == "spread"
        pushed = push_at(live, streams, hz=30, count=30)
        assert http.put("/recordings/stop").json() == 1
        assert recorded(live.app.state.recorder.root, "spread") == pushed
