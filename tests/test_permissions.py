"""Least privilege, route by route: a headset that may only push `hl1:*`, a viewer that may only
read `*:main`, and an admin, each refused exactly what they may not do (REST, push and pull sockets,
MJPEG, status, metrics, recordings), over every route of the routing table."""
from __future__ import annotations

import struct

import httpx
import msgpack
import orjson
import pytest
from starlette.routing import Route, WebSocketRoute
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from support.servers import live_server, make_settings
from support.permissionlab import JPEG, SEEDED, client, forbidden, record, socket_refusal, stream_ids, users_file
from ptgstore.permissions import Rights
from support.ws import expect_close, read_delivery, ws_connect

# -- REST -----------------------------------------------------------------------------------------

def test_headset_pushes_its_own_streams_and_nothing_else(lab, rdb):
    with client(lab, lab.token("headset")) as headset:
        assert headset.post("/data/hl1:main", files=[("f", ("f", b"x"))]).status_code == 200
        assert forbidden(headset.post("/data/hl2:main", files=[("f", ("f", b"x"))]), "write", "'hl2:main'")
        before = stream_ids(rdb)
        assert before == set(SEEDED) | {"hl1:main"}
        mixed = headset.post("/data/*", files=[("f", ("hl1:new", b"a")), ("f", ("hl2:new", b"b"))])
        assert forbidden(mixed, "write", "'hl2:new'")
        assert stream_ids(rdb) == before  # refused whole: not even hl1:new
        assert headset.post("/data/*", files=[("f", ("hl1:new", b"a"))]).status_code == 200
        # no read anywhere, not even of what it pushes
        assert forbidden(headset.get("/data/hl1:main", params={"last_entry_id": "0"}), "read", "'hl1:main'")
        assert forbidden(headset.get("/streams/hl1:main"), "read")
        assert headset.get("/streams").json() == []
        assert headset.get("/streams", params={"info": "true"}).json() == []
        assert headset.get("/status/streams").json()["streams"] == []
        assert forbidden(headset.get("/mjpeg/hl1:main"), "read")
        # no admin
        assert forbidden(headset.put("/streams/hl1:main", json={"max_len": 5}), "admin")
        assert forbidden(headset.delete("/streams/hl1:main"), "admin")
        assert forbidden(headset.get("/status"), "admin")
        assert forbidden(headset.get("/metrics"), "admin")
    assert {"hl1:main", "hl1:new"} <= stream_ids(rdb)


def test_viewer_reads_main_streams_only(lab, rdb):
    with client(lab, lab.token("viewer")) as viewer:
        assert viewer.get("/streams").json() == ["hl1:main", "hl2:main"]
        assert [i["sid"] for i in viewer.get("/streams", params={"info": "true"}).json()] == ["hl1:main", "hl2:main"]
        assert [s["sid"] for s in viewer.get("/status/streams").json()["streams"]] == ["hl1:main", "hl2:main"]
        both = viewer.get("/data/hl1:main+hl2:main", params={"last_entry_id": "0+0"})
        assert both.status_code == 200 and both.content == JPEG * 2
        assert viewer.get("/data/hl1:main", params={"last_entry_id": "*"}).content == JPEG  # latest
        assert forbidden(viewer.get("/data/hl1:main+lab:imu", params={"last_entry_id": "0+0"}), "read", "'lab:imu'")
        assert viewer.get("/streams/hl2:main").json()["length"] == 1
        assert forbidden(viewer.get("/streams/hl1:depth"), "read", "'hl1:depth'")
        with viewer.stream("GET", "/mjpeg/hl1:main", params={"last_entry_id": "*"}) as mjpeg:
            assert mjpeg.status_code == 200
            assert JPEG in next(mjpeg.iter_bytes())
        assert forbidden(viewer.get("/mjpeg/lab:imu"), "read", "'lab:imu'")
        assert forbidden(viewer.post("/data/hl1:main", files=[("f", ("f", b"x"))]), "write")
        for refused in (viewer.put("/streams/hl1:main", json={}), viewer.delete("/streams/hl1:main"),
                        viewer.get("/status"), viewer.get("/metrics")):
            assert forbidden(refused, "admin"), refused.text
    assert rdb.xlen("hl1:main") == 1


def test_admin_may_do_everything(lab, rdb):
    with client(lab, lab.token("admin")) as admin:
        assert admin.get("/streams").json() == sorted(SEEDED)
        assert len(admin.get("/status/streams").json()["streams"]) == len(SEEDED)
        assert admin.get("/status").status_code == 200
        assert admin.get("/metrics").status_code == 200
        assert admin.put("/streams/lab:imu", json={"max_len": 5}).status_code == 200
        assert admin.post("/data/*", files=[("f", ("hl2:x", b"a"))]).status_code == 200
        assert admin.delete("/streams/hl1:depth").json() == {"deleted": ["hl1:depth"]}


def test_the_metrics_token_still_scrapes(tmp_path, rdb, redis_server):
    settings = make_settings(tmp_path, redis_server.url, auth="users", metrics_token="m" * 32)
    users_file(settings.users_path, viewer=Rights(("*",), (), False))
    with live_server(settings) as live:
        assert httpx.get(live.url + "/metrics", headers={"Authorization": "Bearer " + "m" * 32}).status_code == 200
        assert forbidden(client(live, live.token("viewer")).get("/metrics"), "admin")


# -- sockets --------------------------------------------------------------------------------------

def test_push_sockets_refuse_streams_the_token_may_not_write(lab, rdb):
    headset, viewer = lab.token("headset"), lab.token("viewer")
    with ws_connect(lab, "/data/hl1:main/push", token=headset, ack="true") as ws:
        ws.send(b"entry")
        assert ws.recv(timeout=10).count("-") == 1
    code, reason = socket_refusal(lab, headset, "/data/hl2:main/push", [b"x"])
    assert code == 1008 and reason == "forbidden: no write permission on stream 'hl2:main'"
    code, reason = socket_refusal(lab, headset, "/data/hl2:main/push", [b"x"], producer="p1", seq="1", ack="true")
    assert code == 1008 and reason == "forbidden: no write permission on stream 'hl2:main'"  # idempotent too
    code, reason = socket_refusal(lab, headset, "/data/hl1:a+hl2:b/push", batch="true")
    assert code == 1008 and "'hl2:b'" in reason
    code, reason = socket_refusal(lab, viewer, "/data/hl1:main/push", [b"x"])
    assert code == 1008 and "write" in reason
    before = rdb.xlen("hl1:main")
    # a `*` batch: the first one allowed, the second refused whole (nothing of it stored)
    allowed = msgpack.packb([["hl1:main", 0], ["hl1:cam", 1]])
    mixed = msgpack.packb([["hl1:main", 0], ["hl2:main", 1]])
    with ws_connect(lab, "/data/*/push", token=headset, ack="true", header="msgpack") as ws:
        ws.send(allowed)
        ws.send(b"ab")
        assert len(ws.recv(timeout=10).split(",")) == 2
        ws.send(mixed)
        ws.send(b"cd")
        code, reason = expect_close(ws)
    assert code == 1008 and reason == "forbidden: no write permission on stream 'hl2:main'"
    assert rdb.xlen("hl1:main") == before + 1
    assert rdb.xlen("hl2:main") == 1 and rdb.xlen("hl1:cam") == 1


def test_pull_sockets_need_read_on_every_stream(lab):
    viewer, headset, admin = lab.token("viewer"), lab.token("headset"), lab.token("admin")
    with ws_connect(lab, "/data/hl1:main+hl2:main/pull", token=viewer, last_entry_id="0+0", count=10) as ws:
        assert sorted(sid for sid, _, _ in read_delivery(ws)) == ["hl1:main", "hl2:main"]
    with ws_connect(lab, "/data/hl1:main/pull", token=viewer, last_entry_id="*", latest="true") as ws:
        assert [data for _, _, data in read_delivery(ws)] == [JPEG]
    code, reason = socket_refusal(lab, viewer, "/data/hl1:main+lab:imu/pull", last_entry_id="0+0")
    assert code == 1008 and reason == "forbidden: no read permission on stream 'lab:imu'"
    code, reason = socket_refusal(lab, headset, "/data/hl1:main/pull", last_entry_id="0")
    assert code == 1008 and "'hl1:main'" in reason
    with ws_connect(lab, "/data/lab:imu/pull", token=admin, last_entry_id="0") as ws:
        assert len(read_delivery(ws)) == 1


def test_a_close_reason_naming_a_long_stream_fits_a_close_frame(lab):
    sid = "hl2:" + "x" * 250
    code, reason = socket_refusal(lab, lab.token("headset"), f"/data/{sid}/push", [b"x"])
    assert code == 1008 and reason.startswith("forbidden: no write permission on stream 'hl2:xxx")
    assert len(reason.encode()) <= 123


# -- recordings -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_recordings_need_read_on_what_they_hold(lab, rdb):
    viewer, headset, admin = lab.token("viewer"), lab.token("headset"), lab.token("admin")
    assert forbidden(record(lab, viewer, "everything", None), "read", "every stream")
    assert forbidden(record(lab, viewer, "imu", "lab:imu"), "read", "'lab:imu'")
    assert forbidden(record(lab, headset, "h", "hl1:main"), "read", "'hl1:main'")
    assert record(lab, viewer, "mains", "hl1:main+hl2:main").status_code == 200
    assert record(lab, admin, "all", None).status_code == 200
    with client(lab, viewer) as http:
        assert http.get("/recordings").json() == ["mains"]
        assert [i["name"] for i in http.get("/recordings", params={"info": "true"}).json()] == ["mains"]
        info = http.get("/recordings/mains").json()
        assert http.get(f"/recordings/static/mains/{info['files'][0]}").status_code == 200
        all_info = client(lab, admin).get("/recordings/all").json()
        assert set(all_info["streams"]) >= {"hl1:main", "lab:imu"}
        refused = http.get("/recordings/all")  # names the first stream it holds that the viewer may not read
        assert forbidden(refused, "read") and any(f"'{sid}'" in refused.text for sid in ("hl1:depth", "lab:imu"))
        assert forbidden(http.get(f"/recordings/static/all/{all_info['files'][0]}"), "read")
        for refused in (http.put("/recordings/mains/rename/other"), http.put("/recordings/mains/hide"),
                        http.put("/recordings/mains/unhide"), http.delete("/recordings/mains"),
                        http.delete("/recordings/cache"),
                        http.post("/recordings/upload/mains/x.txt", files=[("f", ("f", b"x"))])):
            assert forbidden(refused, "admin", "recordings"), refused.text
    with client(lab, headset) as http:
        assert http.get("/recordings").json() == []  # an empty list, not a refusal
    with client(lab, admin) as http:
        assert http.get("/recordings").json() == ["all", "mains"]
        assert http.get(f"/recordings/static/mains/{info['files'][0]}").status_code == 200
        assert http.put("/recordings/mains/hide").status_code == 200


@pytest.mark.slow
def test_replay_needs_write_on_every_target_and_read_on_the_recording(lab, rdb):
    viewer, headset, admin = lab.token("viewer"), lab.token("headset"), lab.token("admin")
    record(lab, admin, "mains", "hl1:main+hl2:main")
    # the viewer may read the recording but write nothing
    code, reason = socket_refusal(lab, viewer, "/recordings/replay", rec_id="mains", fullspeed="true")
    assert code == 1008 and reason.startswith("forbidden: no write permission on stream")
    # the headset may write hl1:* but not read the recording
    code, reason = socket_refusal(lab, headset, "/recordings/replay", rec_id="mains", sid="hl1:main",
                                  prefix="hl1:", fullspeed="true")
    assert code == 1008 and reason == "forbidden: no read permission on stream 'hl1:main'"
    before = stream_ids(rdb)
    with ws_connect(lab, "/recordings/replay", token=admin, rec_id="mains", prefix="copy-", fullspeed="true") as ws:
        while True:
            try:
                ws.recv(timeout=30)
            except ConnectionClosed as closed:
                assert closed.rcvd.code == 1000
                break
    assert stream_ids(rdb) - before == {"copy-hl1:main", "copy-hl2:main"}


# -- every route of the routing table x the three users ------------------------------------------------

H, V, A = "headset", "viewer", "admin"
EVERYONE = {H, V, A}
FORM = {"content-type": "application/x-www-form-urlencoded"}
# (method, route path) -> (concrete path, request options, the users allowed); run in this order,
# each user in the order headset, viewer, admin (so that what the admin changes comes last)
REST_MATRIX = {
    ("POST", "/token"): ("/token", {"data": {"username": "viewer", "password": "viewer"}}, EVERYONE),
    ("POST", "/token/derive"): ("/token/derive", {"data": {"read": "hl1:main"}}, {V, A}),
    ("GET", "/token/scope"): ("/token/scope", {}, EVERYONE),
    ("GET", "/ping"): ("/ping", {}, EVERYONE),
    ("GET", "/ping/error"): ("/ping/error", {}, set()),  # a deliberate 500 for everyone
    ("GET", "/metrics"): ("/metrics", {}, {A}),
    ("GET", "/openapi.json"): ("/openapi.json", {}, EVERYONE),
    ("GET", "/docs"): ("/docs", {}, EVERYONE),
    ("GET", "/docs/static/{name}"): ("/docs/static/swagger-ui.css", {}, EVERYONE),
    ("GET", "/docs/sockets"): ("/docs/sockets", {}, EVERYONE),
    ("GET", "/asyncapi.json"): ("/asyncapi.json", {}, EVERYONE),
    ("GET", "/streams"): ("/streams", {}, EVERYONE),
    ("GET", "/streams/{sid:path}"): ("/streams/hl1:main", {}, {V, A}),
    ("PUT", "/streams/{sid:path}"): ("/streams/hl1:main", {"json": {"k": 1}}, {A}),
    ("DELETE", "/streams/{sid:path}"): ("/streams/hl1:gone", {}, {A}),
    ("GET", "/data/{sid:path}"): ("/data/hl1:main", {"params": {"last_entry_id": "0"}}, {V, A}),
    ("POST", "/data/{sid:path}"): ("/data/hl1:main", {"files": [("f", ("f", JPEG))]}, {H, A}),
    ("GET", "/mjpeg/{sid:path}"): ("/mjpeg/hl1:main", {"params": {"last_entry_id": "*"}}, {V, A}),
    ("GET", "/status"): ("/status", {}, {A}),
    ("GET", "/status/streams"): ("/status/streams", {}, EVERYONE),
    ("GET", "/"): ("/", {}, EVERYONE),
    ("GET", "/recordings"): ("/recordings", {}, EVERYONE),
    ("GET", "/recordings/current"): ("/recordings/current", {}, EVERYONE),
    ("GET", "/recordings/{rec_id:recording}"): ("/recordings/mains", {}, {V, A}),
    ("GET", "/recordings/static/{rec_id}/{name}"): ("/recordings/static/mains/info.json", {}, {V, A}),
    ("PUT", "/recordings/start"): ("/recordings/start", {"params": {"sid": "hl1:main"}}, {V, A}),
    ("PUT", "/recordings/stop"): ("/recordings/stop", {}, EVERYONE),  # nothing is active: nothing to refuse
    ("PUT", "/recordings/{rec_id:recording}/hide"): ("/recordings/mains/hide", {}, {A}),
    ("PUT", "/recordings/{rec_id:recording}/unhide"): ("/recordings/mains/unhide", {}, {A}),
    ("POST", "/recordings/upload/{rec_id}/{name}"): ("/recordings/upload/mains/notes.txt",
                                                          {"files": [("f", ("f", b"notes"))]}, {A}),
    ("DELETE", "/recordings/cache"): ("/recordings/cache", {}, {A}),
    ("PUT", "/recordings/{rec_id:recording}/rename/{new_id}"): ("/recordings/spare/rename/spare2", {}, {A}),
    ("DELETE", "/recordings/{rec_id:recording}"): ("/recordings/spare2", {}, {A}),
}
# route path -> (concrete path, query, the users allowed)
SOCKET_MATRIX = {
    "/data/{sid:path}/push": ("/data/hl1:main/push", {"ack": "true"}, {H, A}),
    "/data/{sid:path}/pull": ("/data/hl1:main/pull", {"last_entry_id": "0"}, {V, A}),
    "/recordings/replay": ("/recordings/replay", {"rec_id": "mains", "prefix": "copy-", "fullspeed": "true"}, {A}),
    "/foxglove": None,  # a socket of its own protocol: test_foxglove_advertises_only_readable_streams...
}


def _rest_outcome(http: httpx.Client, method: str, path: str, options: dict) -> int:
    if path.startswith("/mjpeg/"):
        with http.stream(method, path, **options) as reply:
            if reply.status_code == 200:
                next(reply.iter_bytes())  # the first part arrives: served
            else:
                reply.read()
            return reply.status_code
    reply = http.request(method, path, **options)
    if reply.status_code == 403:
        assert reply.json()["detail"].startswith("forbidden:"), (method, path, reply.text)
    if method == "PUT" and path == "/recordings/start" and reply.status_code == 200:
        assert http.put("/recordings/stop").json() == 1
    return reply.status_code


def _socket_outcome(server, token: str, path: str, query: dict) -> int | tuple:
    with ws_connect(server, path, token=token, **query) as ws:
        try:
            if path.endswith("/push"):
                ws.send(b"entry")
            message = ws.recv(timeout=30)
        except ConnectionClosed as closed:
            return closed.rcvd.code, closed.rcvd.reason
        return "served" if message else "empty"


@pytest.mark.slow
def test_every_route_refuses_exactly_what_each_user_may_not_do(lab):
    routes = {(m, r.path) for r in lab.app.routes if isinstance(r, Route) for m in r.methods - {"HEAD"}}
    assert routes == set(REST_MATRIX), f"routes missing from the matrix: {routes ^ set(REST_MATRIX)}"
    sockets = {r.path for r in lab.app.routes if isinstance(r, WebSocketRoute)}
    assert sockets == set(SOCKET_MATRIX), f"socket routes missing from the matrix: {sockets ^ set(SOCKET_MATRIX)}"
    with client(lab, lab.token("admin")) as admin:
        assert admin.post("/data/hl1:gone", files=[("f", ("f", b"x"))]).status_code == 200
    record(lab, lab.token("admin"), "mains", "hl1:main+hl2:main")
    record(lab, lab.token("admin"), "spare", "hl1:main")
    outcomes = {}
    for (method, route), (path, options, allowed) in REST_MATRIX.items():
        for user in (H, V, A):
            with client(lab, lab.token(user)) as http:
                status = _rest_outcome(http, method, path, options)
            outcomes[(method, route, user)] = status
            if route == "/ping/error":
                assert status == 500
            elif user in allowed:
                assert status in (200, 201), f"{user} refused {method} {path}: {status}"
            else:
                assert status == 403, f"{user} allowed {method} {path}: {status}"
    for route, case in SOCKET_MATRIX.items():
        if case is None:
            continue
        path, query, allowed = case
        for user in (H, V, A):
            outcome = _socket_outcome(lab, lab.token(user), path, query)
            if user in allowed:
                assert outcome == "served", f"{user} refused {path}: {outcome}"
            else:
                assert outcome[0] == 1008 and outcome[1].startswith("forbidden:"), f"{user} on {path}: {outcome}"


# -- the Foxglove endpoint ------------------------------------------------------------------------------

FOXGLOVE = "foxglove.websocket.v1"


def foxglove_session(server, token: str, publish_to: str) -> tuple[set[str], list[dict]]:
    """The topics a Foxglove socket is advertised, and the error statuses it gets for advertising a
    client channel on `publish_to` and sending one message on it."""
    with connect(f"{server.ws_url}/foxglove?token={token}", subprotocols=[FOXGLOVE], open_timeout=10,
                 compression=None) as ws:
        ws.send(orjson.dumps({"op": "advertise", "channels": [
            {"id": 7, "topic": publish_to, "encoding": "application/octet-stream", "schemaName": ""}]}).decode())
        ws.send(b"\x01" + struct.pack("<I", 7) + b"published")
        ws.send('{"op": "no such op"}')  # its error status comes after everything the above caused
        topics, errors_seen = set(), []
        while True:
            message = orjson.loads(ws.recv(timeout=30))
            if message["op"] == "advertise":
                topics |= {channel["topic"] for channel in message["channels"]}
            elif message["op"] == "status" and message["level"] == 2:
                if "unsupported op 'no such op'" in message["message"]:
                    break
                errors_seen.append(message)
    return topics, errors_seen


def test_foxglove_advertises_only_readable_streams_and_publishes_only_where_the_token_may_write(lab, rdb):
    admin_topics, admin_errors = foxglove_session(lab, lab.token("admin"), "lab:imu")
    assert set(SEEDED) <= admin_topics and admin_errors == []
    viewer_topics, viewer_errors = foxglove_session(lab, lab.token("viewer"), "hl1:main")
    assert viewer_topics == {"hl1:main", "hl2:main"}
    assert any("may not write to hl1:main" in e["message"] for e in viewer_errors)
    headset_topics, headset_errors = foxglove_session(lab, lab.token("headset"), "hl1:main")
    assert headset_topics == set() and not any("may not write" in e["message"] for e in headset_errors)
    published = [fields[b"d"] for _, fields in rdb.xrange("hl1:main") if fields.get(b"d") == b"published"]
    assert len(published) == 1  # the headset's; the viewer's was never stored
    assert any(fields.get(b"d") == b"published" for _, fields in rdb.xrange("lab:imu"))
