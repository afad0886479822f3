"""Health and error shapes: /ping with Redis up and down, JSON errors for 404/405/500."""
import logging

import httpx

from ptgstore.testing import RedisServer, wait_until
from support.servers import live_server, make_settings


def test_ping_needs_no_token(server):
    reply = httpx.get(server.url + "/ping")
    assert reply.status_code == 200 and reply.json() is True


def test_ping_reports_redis_down_and_recovers(tmp_path):
    redis_server = RedisServer(tmp_path / "redis").start()
    with live_server(make_settings(tmp_path, redis_server.url)) as live:
        assert httpx.get(live.url + "/ping").json() is True
        redis_server.stop()
        down = httpx.get(live.url + "/ping", timeout=30)
        assert down.status_code == 503
        assert "store unavailable" in down.json()["detail"]
        redis_server.start()
        wait_until(lambda: httpx.get(live.url + "/ping", timeout=30).status_code == 200, timeout=20,
                   what="/ping to recover after Redis restarted")
    redis_server.stop()


def test_error_bodies_are_json(server, http):
    assert httpx.get(server.url + "/ping/error").status_code == 500
    assert httpx.get(server.url + "/ping/error").json() == {"detail": "internal server error"}
    missing = http.get("/no/such/route")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    wrong_method = http.patch("/streams/cam")
    assert wrong_method.status_code == 405 and wrong_method.json() == {"detail": "Method Not Allowed"}
    unauthenticated = httpx.get(server.url + "/streams")
    assert unauthenticated.status_code == 401 and "token" in unauthenticated.json()["detail"]


def test_trailing_slash_is_optional(http):
    assert http.get("/streams/").status_code == 200
    assert http.get("/streams").status_code == 200
    assert http.post("/data/cam/", files=[("f", ("f", b"x"))]).status_code == 200
    assert http.get("/data/cam/").content == b"x"


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_ping_error_logs_one_line_not_a_traceback(server):
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("ptgstore", "uvicorn.error", "uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        for _ in range(3):
            reply = httpx.get(server.url + "/ping/error")
            assert reply.status_code == 500 and reply.json() == {"detail": "internal server error"}
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    errors = [r for r in handler.records if r.levelno >= logging.ERROR]
    assert len(errors) == 3 and all("/ping/error" in r.getMessage() for r in errors)
    assert not any(r.exc_info for r in errors)
