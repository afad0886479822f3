"""Several server processes on one Redis: a push through one is pulled through another,
`--workers 2` shares one embedded Redis and one set of metrics, and stops it cleanly."""
from __future__ import annotations

import json
import os

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from ptgstore.testing import wait_until
from support.servers import ServeProcess
from support.ws import read_delivery

pytestmark = pytest.mark.slow  # `ptgstore serve --workers` processes


def counter(server: ServeProcess, name: str, **labels) -> float:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {server.token()}"},
                     timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def push_batch(ws_url: str, token: str, sid: str, entries: list[bytes]) -> list[str]:
    offsets, at = [], 0
    for data in entries:
        offsets.append(at)
        at += len(data)
    with connect(f"{ws_url}/data/{sid}/push?batch=true&ack=true&token={token}", open_timeout=10) as ws:
        ws.send(json.dumps(offsets))
        ws.send(b"".join(entries))
        return ws.recv(timeout=10).split(",")


def test_push_through_one_server_is_pulled_through_another(tmp_path, redis_server, rdb):
    with ServeProcess(tmp_path / "one", "--redis-url", redis_server.url) as one, \
            ServeProcess(tmp_path / "two", "--redis-url", redis_server.url) as two:
        one.wait_ready()
        two.wait_ready()
        # separate data directories, so separate secrets: each token comes from its own server
        with connect(f"{two.ws_url}/data/cam/pull?last_entry_id=$&count=10&token={two.token()}",
                     open_timeout=10) as pull:
            wait_until(lambda: counter(two, "ptgstore_open_sockets", kind="pull") == 1, what="pull open")
            frames = [os.urandom(1000), b"", os.urandom(70_000)]
            ids = push_batch(one.ws_url, one.token(), "cam", frames)
            received = read_delivery(pull)
            while len(received) < len(frames):
                received += read_delivery(pull)
        assert received == [("cam", i, f) for i, f in zip(ids, frames)]
        assert counter(one, "ptgstore_entries_pushed_total", via="websocket") == 3
        assert counter(two, "ptgstore_entries_pulled_total", via="websocket") == 3
        assert counter(two, "ptgstore_entries_pushed_total", via="websocket") == 0
    assert one.process.returncode in (0, -15) and two.process.returncode in (0, -15)


def test_two_workers_share_embedded_redis_and_metrics_and_stop_it_cleanly(tmp_path):
    data = tmp_path / "data"
    metrics_dir = tmp_path / "metrics"
    pushed: dict[str, bytes] = {}
    with ServeProcess(data, "--workers", "2", env={"PTGSTORE_METRICS_DIR": str(metrics_dir)}) as server:
        server.wait_ready(timeout=60)
        state = json.loads((data / "redis" / "state.json").read_text())
        token = server.token()
        for n in range(20):  # separate connections, spread over the workers by the kernel
            frames = [b"connection %02d entry %d" % (n, i) for i in range(5)]
            pushed.update(zip(push_batch(server.ws_url, token, "cam", frames), frames))
        # each scrape lands on either worker; each must report the sum over both
        for _ in range(10):
            assert counter(server, "ptgstore_entries_pushed_total", via="websocket") == 100
            assert counter(server, "ptgstore_sockets_total", kind="push") == 20
        assert any(name.endswith(".db") for name in os.listdir(metrics_dir))
        # each worker knows how many serve (the CLI hands --workers on): /status says 2 whichever answers
        for _ in range(6):
            reply = httpx.get(server.url + "/status", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert reply.json()["workers"] == 2
        # a worker that has created its values file and not yet sized it (as each does at start-up): the
        # file holds nothing, and the sums read as before (reading it failed /metrics and /status with a 500)
        (metrics_dir / "counter_4242424.db").touch()
        for _ in range(6):
            reply = httpx.get(server.url + "/status", headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert reply.status_code == 200 and reply.json()["workers"] == 2, reply.text
            assert counter(server, "ptgstore_entries_pushed_total", via="websocket") == 100
        status = server.terminate()
    assert status in (0, -15), server.output[-3000:]
    # the parent stopped the embedded Redis after the workers, and said so
    assert not (data / "redis" / "state.json").exists()
    wait_until(lambda: not os.path.exists(f"/proc/{state['pid']}") or
               open(f"/proc/{state['pid']}/stat").read().split()[2] == "Z", what="embedded redis to exit")
    # everything acked is in the append-only log: a fresh server on the same data finds it
    with ServeProcess(data) as again:
        again.wait_ready()
        reply = httpx.get(again.url + "/data/cam", params={"last_entry_id": "0", "count": 1000},
                          headers={"Authorization": f"Bearer {again.token()}"}, timeout=10)
        items = json.loads(reply.headers["entry-offset"])
        ends = [item[2] for item in items[1:]] + [len(reply.content)]
        found = {item[1]: reply.content[item[2]:end] for item, end in zip(items, ends)}
    assert found == pushed
