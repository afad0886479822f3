"""`/metrics` in Prometheus text format, its access rules, the structured access log, CORS."""
from __future__ import annotations

import logging
import re

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ptgstore.testing import wait_until
from support.servers import live_server, make_settings
from support.ws import expect_close, read_delivery, ws_connect


def scrape(server, **kwargs) -> dict[tuple, float]:
    """Every sample of `/metrics` as {(name, sorted labels): value}."""
    kwargs.setdefault("headers", {"Authorization": f"Bearer {server.token()}"})
    reply = httpx.get(server.url + "/metrics", timeout=10, **kwargs)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.slow
def test_counts_move_during_a_push_and_a_pull(server, rdb):
    before = scrape(server)
    assert value(before, "ptgstore_open_sockets", kind="push") == 0
    with ws_connect(server, "/data/cam/push", batch="true", ack="true") as push:
        wait_until(lambda: value(scrape(server), "ptgstore_open_sockets", kind="push") == 1, what="open push socket")
        push.send(orjson.dumps([0, 3, 10]).decode())
        push.send(b"abc" + b"defghij" + b"kl")
        assert len(push.recv(timeout=10).split(",")) == 3
        during = scrape(server)
        assert value(during, "ptgstore_entries_pushed_total", via="websocket") == 3
        assert value(during, "ptgstore_bytes_pushed_total", via="websocket") == 12
        push.send("[0]")
        push.send(b"x" * 1000)
        push.recv(timeout=10)
        assert value(scrape(server), "ptgstore_entries_pushed_total", via="websocket") == 4
        assert value(scrape(server), "ptgstore_bytes_pushed_total", via="websocket") == 1012
    wait_until(lambda: value(scrape(server), "ptgstore_open_sockets", kind="push") == 0, what="push socket closed")
    after = scrape(server)
    assert value(after, "ptgstore_socket_closes_total", kind="push", code="1000", by="client") == 1
    assert value(after, "ptgstore_sockets_total", kind="push") == 1

    with ws_connect(server, "/data/cam/pull", last_entry_id="0", count="10") as pull:
        entries = read_delivery(pull)
        assert [data for _, _, data in entries] == [b"abc", b"defghij", b"kl", b"x" * 1000]
        wait_until(lambda: value(scrape(server), "ptgstore_entries_pulled_total", via="websocket") == 4,
                   what="pulled entries counted")
        assert value(scrape(server), "ptgstore_bytes_pulled_total", via="websocket") == 1012
        assert value(scrape(server), "ptgstore_open_sockets", kind="pull") == 1

    with server.http() as http:
        http.post("/data/imu", files=[("a", ("a", b"12345")), ("b", ("b", b"678"))]).raise_for_status()
        assert http.get("/data/imu", params={"count": 5, "last_entry_id": "0"}).content == b"12345678"
    samples = scrape(server)
    assert value(samples, "ptgstore_entries_pushed_total", via="http") == 2
    assert value(samples, "ptgstore_bytes_pushed_total", via="http") == 8
    assert value(samples, "ptgstore_entries_pulled_total", via="http") == 2
    assert value(samples, "ptgstore_bytes_pulled_total", via="http") == 8
    # every store call is timed, by store method
    assert value(samples, "ptgstore_redis_roundtrip_seconds_count", op="add") == 3  # two pushed batches, one upload
    assert value(samples, "ptgstore_redis_roundtrip_seconds_count", op="read") >= 2


def test_latency_by_route_template_and_no_label_per_stream(server, rdb, http):
    for sid in ("private-cam-1", "private-cam-2", "private-cam-3"):
        http.get(f"/data/{sid}").raise_for_status()
        http.get(f"/streams/{sid}/").raise_for_status()
    text = httpx.get(server.url + "/metrics").text
    assert "private-cam" not in text, "stream ids are not labels unless configured"
    samples = scrape(server)
    assert value(samples, "ptgstore_http_request_duration_seconds_count", method="GET", route="/data/{sid}") == 3
    assert value(samples, "ptgstore_http_request_duration_seconds_count", method="GET", route="/streams/{sid}") == 3
    assert value(samples, "ptgstore_http_requests_total", method="GET", route="/data/{sid}", status="200") == 3
    bucket = value(samples, "ptgstore_http_request_duration_seconds_bucket", method="GET", route="/data/{sid}",
                   le="+Inf")
    assert bucket == 3
    assert http.get("/nowhere/at/all").status_code == 404
    for invented in ("PROPFIND", "MKCOL"):  # methods HTTP parsers accept, not ours
        http.request(invented, "/streams")
    samples = scrape(server)
    assert value(samples, "ptgstore_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value(samples, "ptgstore_http_requests_total", method="other", route="/streams", status="405") == 2
    assert "PROPFIND" not in httpx.get(server.url + "/metrics").text


def test_stream_labels_when_configured(tmp_path, redis_server, rdb):
    with live_server(make_settings(tmp_path, redis_server.url, metrics_stream_labels=True)) as live:
        with live.http() as http:
            http.post("/data/cam-7", files=[("a", ("a", b"123"))]).raise_for_status()
        samples = scrape(live)
        assert value(samples, "ptgstore_entries_pushed_total", via="http", stream="cam-7") == 1


def test_errors_by_reason(server, rdb):
    assert httpx.get(server.url + "/streams").status_code == 401
    with ws_connect(server, "/data/cam/push", batch="true") as push:
        push.send("not json")
        push.send(b"abc")
        assert expect_close(push)[0] == 1007
    wait_until(lambda: value(scrape(server), "ptgstore_socket_closes_total", kind="push", code="1007",
                             by="server") == 1, what="the 1007 close counted")
    samples = scrape(server)
    assert value(samples, "ptgstore_errors_total", reason="unauthenticated") == 1
    assert value(samples, "ptgstore_errors_total", reason="bad_request") == 1
    with pytest.raises(Exception):
        ws_connect(server, "/data/cam/push", token="forged").recv(timeout=5)
    wait_until(lambda: value(scrape(server), "ptgstore_errors_total", reason="unauthenticated") == 2,
               what="the refused handshake counted (401, as the refused REST request)")


def test_a_client_close_is_the_clients_whatever_its_reason_says(server, rdb):
    # the server's own shutdown close is marked on its event, not recognised by its reason text
    with ws_connect(server, "/data/cam/push") as push:
        wait_until(lambda: value(scrape(server), "ptgstore_open_sockets", kind="push") == 1, what="open push socket")
        push.close(code=1001, reason="server shutting down")
    wait_until(lambda: value(scrape(server), "ptgstore_socket_closes_total", kind="push", code="1001",
                             by="client") == 1, what="the client's 1001 close counted as the client's")
    assert value(scrape(server), "ptgstore_socket_closes_total", kind="push", code="1001", by="server") == 0


def test_metrics_need_a_token_even_from_loopback(tmp_path, redis_server, rdb, startup_log):
    settings = make_settings(tmp_path, redis_server.url, metrics_token="scraper-secret-0123456789")
    with live_server(settings) as live:
        url = live.url + "/metrics"
        for headers in ({}, {"X-Forwarded-For": "203.0.113.9"}, {"Authorization": "Bearer wrong"}):
            refused = httpx.get(url, headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"] == "Bearer" and "token" in refused.json()["detail"]
            assert "ptgstore_" not in refused.text
        assert httpx.get(url, headers={"Authorization": "Bearer scraper-secret-0123456789"}).status_code == 200
        assert httpx.get(url, headers={"Authorization": f"Bearer {live.token()}"}).status_code == 200
        assert httpx.get(url, params={"token": live.token()}).status_code == 200
    assert not any("/metrics is public" in line for line in startup_log)
    with live_server(make_settings(tmp_path, redis_server.url, metrics_public=True)) as live:
        assert httpx.get(live.url + "/metrics", headers={"Forwarded": "for=203.0.113.9"}).status_code == 200
        assert httpx.get(live.url + "/metrics").status_code == 200
    assert any("/metrics is public" in line for line in startup_log)


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def startup_log():
    handler = Lines()
    logger = logging.getLogger("ptgstore")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


@pytest.fixture
def access_log():
    handler = Lines()
    logger = logging.getLogger("ptgstore.access")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def fields(line: str) -> dict[str, str]:
    return {key: orjson.loads(raw) if raw.startswith('"') else raw
            for key, raw in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)}


def test_one_log_line_per_socket_open_and_close(server, rdb, access_log):
    with ws_connect(server, "/data/cam+imu/push", batch="true", ack="true") as push:
        push.send(orjson.dumps([["cam", 0], ["imu", 2]]).decode())
        push.send(b"abcdef")
        push.recv(timeout=10)
    wait_until(lambda: any(line.startswith("ws_close") for line in access_log), what="the close line")
    with ws_connect(server, "/data/cam/pull", last_entry_id="0", timeout="50") as pull:
        read_delivery(pull)
        assert expect_close(pull) == (1000, "timeout without data")
    wait_until(lambda: sum(line.startswith("ws_close") for line in access_log) == 2, what="the pull close line")
    opens = [fields(line) for line in access_log if line.startswith("ws_open")]
    closes = [fields(line) for line in access_log if line.startswith("ws_close")]
    assert [(o["kind"], o["streams"], o["user"]) for o in opens] == [("push", "cam+imu", "test"),
                                                                     ("pull", "cam", "test")]
    push_close, pull_close = closes
    assert push_close["kind"] == "push" and push_close["streams"] == "cam+imu"
    assert (push_close["entries"], push_close["bytes"], push_close["code"], push_close["by"]) == \
        ("2", "6", "1000", "client")
    assert float(push_close["duration_s"]) >= 0
    assert (pull_close["entries"], pull_close["bytes"], pull_close["code"], pull_close["by"], pull_close["reason"]) \
        == ("1", "2", "1000", "server", "timeout without data")
    http_lines = [fields(line) for line in access_log if line.startswith("http ")]
    assert http_lines == [] or all("route" in line for line in http_lines)


@pytest.mark.slow
def test_http_access_line_and_log_level(tmp_path, redis_server, rdb, access_log):
    with live_server(make_settings(tmp_path, redis_server.url)) as live, live.http() as http:
        http.get("/data/cam-9", params={"count": 2})
        wait_until(lambda: any('route=/data/{sid}' in line for line in access_log), what="the request line")
        line = fields(next(line for line in access_log if 'route=/data/{sid}' in line))
        assert (line["method"], line["path"], line["status"], line["user"]) == ("GET", "/data/cam-9", "200", "test")
    access_log.clear()
    with live_server(make_settings(tmp_path, redis_server.url, log_level="warning")) as live, live.http() as http:
        assert http.get("/data/cam-9").status_code == 200
        assert http.get("/streams").status_code == 200
    assert access_log == [], "info lines are off at log level warning"
    with live_server(make_settings(tmp_path, redis_server.url, access_log=False)) as live, live.http() as http:
        assert http.get("/data/cam-9").status_code == 200
        with ws_connect(live, "/data/cam-9/pull", timeout="10") as pull:
            assert expect_close(pull)[0] == 1000
        wait_until(lambda: any(line.startswith("ws_close") for line in access_log), what="the socket line")
    assert not any(line.startswith("http ") for line in access_log), "request lines are off, socket lines stay"


def test_cors_origins_setting(tmp_path, redis_server, rdb):
    preflight = {"Origin": "https://lab.example", "Access-Control-Request-Method": "POST"}
    with live_server(make_settings(tmp_path, redis_server.url, cors_origins=("https://lab.example",))) as live:
        allowed = httpx.options(live.url + "/data/cam", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://lab.example"
        other = httpx.options(live.url + "/data/cam", headers={**preflight, "Origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        with live.http() as http:
            reply = http.get("/data/cam", headers={"Origin": "https://lab.example"})
            assert reply.headers["access-control-allow-origin"] == "https://lab.example"
            assert "entry-offset" in reply.headers["access-control-expose-headers"]
    with live_server(make_settings(tmp_path, redis_server.url, cors_origins=("*",))) as live:
        reply = httpx.options(live.url + "/data/cam", headers={**preflight, "Origin": "https://any.example"})
        assert reply.headers["access-control-allow-origin"] == "*"
    with live_server(make_settings(tmp_path, redis_server.url)) as live:
        reply = httpx.options(live.url + "/data/cam", headers=preflight)
        assert "access-control-allow-origin" not in reply.headers, "no CORS unless configured"
