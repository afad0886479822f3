"""Least privilege, route by route: a headset that may only push `hl1:*`, a viewer that may only
read `*:main`, and an admin, each refused exactly what they may not do (REST, push and pull sockets,
MJPEG, status, metrics, recordings), and tokens that can only be narrowed."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time

import httpx
import jwt
import msgpack
import pytest
from websockets.exceptions import ConnectionClosed

from conftest import live_server, make_settings
from ptgstore.permissions import Rights
from ptgstore.users import hash_password, make_record, write_users
from wsutil import expect_close, read_delivery, ws_connect

SEEDED = ["hl1:main", "hl1:depth", "hl2:main", "lab:imu"]
JPEG = b"\xff\xd8\xff\xe0 a tiny jpeg"


def users_file(path, **accounts: Rights | None):
    """Write a users file; each account's password is its name."""
    write_users(path, {name: make_record(hash_password(name), rights or Rights())
                       for name, rights in accounts.items()})


@pytest.fixture
def lab(tmp_path, rdb, redis_server):
    """A `users` server with a headset (push hl1:*), a viewer (read *:main) and an admin, and a
    few streams pushed by the admin."""
    settings = make_settings(tmp_path, redis_server.url, auth="users", recording_segment_seconds=1)
    users_file(settings.users_path, headset=Rights((), ("hl1:*",), False), viewer=Rights(("*:main",), (), False),
               admin=None)
    with live_server(settings) as live:
        with live.http("admin") as admin:
            for sid in SEEDED:
                assert admin.post(f"/data/{sid}", files=[("f", ("f", JPEG))]).status_code == 200
        yield live


def client(server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def forbidden(reply: httpx.Response, *words: str) -> bool:
    detail = reply.json().get("detail", "") if reply.status_code == 403 else ""
    return reply.status_code == 403 and detail.startswith("forbidden:") and all(w in detail for w in words)


def socket_refusal(server, token: str, path: str, send: list | None = None, **query):
    """The close code and reason a socket ends with (after sending `send`)."""
    with ws_connect(server, path, token=token, **query) as ws:
        for message in send or []:
            try:
                ws.send(message)
            except ConnectionClosed:
                break
        return expect_close(ws)


def stream_ids(rdb) -> set[str]:
    return {key.decode() for key in rdb.keys("*") if rdb.type(key) == b"stream"} - {"event:recording:id"}


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

def record(server, token: str, name: str, streams: str | None) -> httpx.Response:
    with client(server, token) as http:
        started = http.put("/recordings/start", params={"rec_id": name, **({"sid": streams} if streams else {})})
        if started.status_code != 200:
            return started
        with client(server, server.token("admin")) as admin:
            for sid in (streams or "hl1:main+lab:imu").split("+"):
                assert admin.post(f"/data/{sid}", files=[("f", ("f", JPEG))]).status_code == 200
        stopped = http.put("/recordings/stop")
        assert stopped.json() == 1, stopped.text
        return started


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
        assert forbidden(http.get("/recordings/all"), "read", "'lab:imu'")
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


# -- narrowed tokens ------------------------------------------------------------------------------

def derive(server, token: str, **fields) -> httpx.Response:
    return httpx.post(server.url + "/token/derive", headers={"Authorization": f"Bearer {token}"},
                      data=fields, timeout=30)


def test_a_derived_token_is_narrower_and_never_regains_what_it_lost(lab):
    viewer = lab.token("viewer")
    reply = derive(lab, viewer, read="hl1:main", ttl="600")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["scope"] == {"read": ["hl1:main"], "write": [], "admin": False} and body["expires_in"] == 600
    assert "set-cookie" not in reply.headers
    narrow = body["access_token"]
    claims = jwt.decode(narrow, options={"verify_signature": False})
    assert claims["sub"] == "viewer" and claims["exp"] - claims["iat"] == 600
    with client(lab, narrow) as http:
        assert http.get("/streams").json() == ["hl1:main"]
        assert http.get("/data/hl1:main", params={"last_entry_id": "0"}).content == JPEG
        assert forbidden(http.get("/data/hl2:main", params={"last_entry_id": "0"}), "read", "'hl2:main'")
        assert http.get("/token/scope").json()["read"] == ["hl1:main"]
    # asking the narrowed token for more than it has: refused, whatever the account may do
    for wider in ({"read": "*:main"}, {"read": "hl1:*"}, {"read": "*"}, {"read": "hl1:mai?"},
                  {"read": "hl1:[m]ain"}, {"write": "hl1:main"}, {"admin": "true"}, {"read": "hl1:main", "ttl": "601"},
                  {"read": "hl1:main", "ttl": str(30 * 24 * 3600)}):
        refused = derive(lab, narrow, **wider)
        assert forbidden(refused), (wider, refused.text)
    # narrower still is fine, and the chain keeps shrinking
    assert derive(lab, narrow, read="hl1:main", ttl="60").status_code == 200
    assert forbidden(derive(lab, viewer, read="lab:imu"), "read", "'lab:imu'")
    assert forbidden(derive(lab, viewer, read="*"), "read")
    assert derive(lab, viewer, read="hl*:main").status_code == 200  # within *:main
    # malformed asks are 400
    for bad in ({}, {"read": ""}, {"read": "a+b"}, {"ttl": "-1", "read": "hl1:main"}, {"ttl": "x", "read": "hl1:main"},
                {"colour": "red"}, {"admin": "perhaps"}):
        assert derive(lab, viewer, **bad).status_code == 400, bad


def test_a_headset_token_derived_for_one_camera(lab, rdb):
    derived = derive(lab, lab.token("headset"), write="hl1:cam*").json()["access_token"]
    with ws_connect(lab, "/data/hl1:cam0/push", token=derived, ack="true") as ws:
        ws.send(b"x")
        assert ws.recv(timeout=10).count("-") == 1
    code, reason = socket_refusal(lab, derived, "/data/hl1:main/push", [b"x"])
    assert code == 1008 and reason == "forbidden: no write permission on stream 'hl1:main'"
    assert forbidden(derive(lab, derived, write="hl1:*"), "write")


def test_derive_by_json_and_from_the_cookie_only_from_the_own_origin(lab):
    viewer = lab.token("viewer")
    reply = httpx.post(lab.url + "/token/derive", headers={"Authorization": f"Bearer {viewer}"},
                       json={"read": ["hl1:main", "hl2:main"], "ttl": 60})
    assert reply.json()["scope"]["read"] == ["hl1:main", "hl2:main"]
    cookie = {"Cookie": f"authorization={viewer}", "Origin": "https://evil.example"}
    refused = httpx.post(lab.url + "/token/derive", headers=cookie, data={"read": "hl1:main"})
    assert refused.status_code == 403 and "cross-site" in refused.json()["detail"]


def test_hostile_derive_requests_get_a_reason_and_change_nothing(lab):
    admin = lab.token("admin")
    headers = {"Authorization": f"Bearer {admin}"}
    many = "&".join(f"read=p{i}" for i in range(33))
    form = {**headers, "content-type": "application/x-www-form-urlencoded"}
    assert httpx.post(lab.url + "/token/derive", headers=form, content=many).status_code == 400
    for body in ({"read": [{"a": 1}]}, {"read": ["x" * 300]}, {"read": ["*"], "ttl": True},
                 {"read": ["*"], "ttl": 1.5}, {"read": [None]}, {"write": ["\x00"]}, ["read"], {"read": ["*"] * 40}):
        reply = httpx.post(lab.url + "/token/derive", headers=headers, json=body)
        assert reply.status_code == 400 and reply.json()["detail"], body
    not_json = httpx.post(lab.url + "/token/derive", headers={**headers, "content-type": "application/json"},
                          content=b"{read")
    assert not_json.status_code == 400
    # no token, a bad token: as every protected route
    assert httpx.post(lab.url + "/token/derive", data={"read": "*"}).status_code == 401
    assert httpx.post(lab.url + "/token/derive", params={"token": "x.y.z"}, data={"read": "*"}).status_code == 401
    # the query place works like the header (a browser's socket-style token)
    assert httpx.post(lab.url + "/token/derive", params={"token": admin}, data={"read": "*"}).status_code == 200
    # an admin may hand out admin, within its own lifetime
    short = derive(lab, admin, admin="true", read="*", ttl="30").json()["access_token"]
    assert forbidden(derive(lab, short, admin="true", read="*", ttl="31"), "ttl")
    assert derive(lab, short, admin="true", read="*", ttl="20").status_code == 200


def test_changed_permissions_apply_at_the_next_request(lab):
    data_dir = lab.settings.data_dir
    viewer = lab.token("viewer")  # follows the account
    narrow = derive(lab, viewer, read="hl1:main").json()["access_token"]  # at most hl1:main
    with client(lab, viewer) as follows, client(lab, narrow) as fixed:
        assert follows.get("/streams").json() == ["hl1:main", "hl2:main"]
        changed = ptgstore(data_dir, "user", "set", "viewer", "--read", "hl2:*", "--read", "lab:*")
        assert changed.returncode == 0, changed.stderr
        assert follows.get("/streams").json() == ["hl2:main", "lab:imu"]
        assert fixed.get("/streams").json() == []  # the intersection: hl1:main is no longer the account's
        ptgstore(data_dir, "user", "set", "viewer", "--full")
        assert follows.get("/streams").json() == sorted(SEEDED)
        assert follows.get("/status").status_code == 200
        assert fixed.get("/streams").json() == ["hl1:main"]  # never more than it was given
        assert forbidden(fixed.get("/status"), "admin")


def test_a_forged_or_malformed_scope_claim_is_refused(lab):
    secret = lab.app.state.authenticator.secret
    now = int(time.time())
    base = {"sub": "viewer", "iat": now, "exp": now + 600}
    for scope in ("all", {"read": "*"}, {"read": [1]}, {"read": ["a+b"]}, {"admin": "yes"}):
        token = jwt.encode({**base, "scope": scope}, secret, algorithm="HS256")
        reply = httpx.get(lab.url + "/streams", headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 401 and "scope" in reply.json()["detail"], scope
    # a wider claim than the account's is cut down to the account's
    wide = jwt.encode({**base, "scope": {"read": ["*"], "write": ["*"], "admin": True}}, secret, algorithm="HS256")
    with client(lab, wide) as http:
        assert http.get("/streams").json() == ["hl1:main", "hl2:main"]
        assert forbidden(http.get("/status"), "admin")


# -- the command line -----------------------------------------------------------------------------

def ptgstore(data_dir, *args, stdin=None):
    return subprocess.run([sys.executable, "-m", "ptgstore", *args, "--data-dir", data_dir], input=stdin,
                          text=True, capture_output=True, timeout=60)


def test_user_commands_manage_permissions(tmp_path):
    data_dir = str(tmp_path / "data")
    assert ptgstore(data_dir, "user", "add", "alice", "--read", "hl1:*", "--write", "hl1:*", "--password-stdin",
                    stdin="pw\n").returncode == 0
    assert ptgstore(data_dir, "user", "add", "root", "--password-stdin", stdin="pw\n").returncode == 0
    assert ptgstore(data_dir, "user", "add", "ops", "--admin", "--read", "*", "--password-stdin",
                    stdin="pw\n").returncode == 0
    listed = ptgstore(data_dir, "user", "ls").stdout.splitlines()
    assert listed == ["alice  read hl1:*; write hl1:*", "ops    read *; write -; admin", "root   full access"]
    assert (tmp_path / "data" / "users.json").stat().st_mode & 0o077 == 0  # other accounts read nothing
    users = json.loads((tmp_path / "data" / "users.json").read_text())
    assert isinstance(users["root"], str)  # full access keeps the format earlier versions read
    assert users["alice"]["read"] == ["hl1:*"] and users["alice"]["admin"] is False
    # a new password keeps the permissions; `set` replaces them and keeps the password
    assert ptgstore(data_dir, "user", "add", "alice", "--password-stdin", stdin="new\n").returncode == 0
    assert ptgstore(data_dir, "user", "list").stdout.splitlines()[0] == "alice  read hl1:*; write hl1:*"
    password = json.loads((tmp_path / "data" / "users.json").read_text())["alice"]["password"]
    assert ptgstore(data_dir, "user", "set", "alice", "--write", "hl1:*").returncode == 0
    after = json.loads((tmp_path / "data" / "users.json").read_text())["alice"]
    assert after == {"password": password, "read": [], "write": ["hl1:*"], "admin": False}
    assert ptgstore(data_dir, "user", "set", "alice", "--full").returncode == 0
    assert json.loads((tmp_path / "data" / "users.json").read_text())["alice"] == password
    for refused in (("set", "nobody", "--read", "*"), ("set", "alice"), ("set", "alice", "--read", "a+b"),
                    ("set", "alice", "--full", "--admin")):
        assert ptgstore(data_dir, "user", *refused).returncode != 0, refused


def test_token_command_mints_narrowed_tokens_only(lab):
    env_dir = lab.settings.data_dir
    minted = subprocess.run([sys.executable, "-m", "ptgstore", "token", "--user", "headset", "--write", "hl1:cam*",
                             "--ttl", "8h", "--data-dir", env_dir], capture_output=True, text=True, timeout=60,
                            env={**_clean_env(), "PTGSTORE_AUTH": "users"})
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 8 * 3600
    assert claims["scope"] == {"read": [], "write": ["hl1:cam*"], "admin": False}
    with client(lab, token) as http:
        assert http.post("/data/hl1:cam0", files=[("f", ("f", b"x"))]).status_code == 200
        assert forbidden(http.post("/data/hl1:main", files=[("f", ("f", b"x"))]), "write")
    wider = subprocess.run([sys.executable, "-m", "ptgstore", "token", "--user", "headset", "--read", "*",
                            "--data-dir", env_dir], capture_output=True, text=True, timeout=60,
                           env={**_clean_env(), "PTGSTORE_AUTH": "users"})
    assert wider.returncode == 1 and "read '*'" in wider.stderr


def _clean_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PTGSTORE_")}


# -- the pattern rules ----------------------------------------------------------------------------

from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

from ptgstore.permissions import Layer, Scope  # noqa: E402

glob_text = st.text(alphabet="ab:*?[]!", min_size=1, max_size=8)


SHORT_IDS = ["".join(p) for n in range(5) for p in itertools.product("ab:*?[]!", repeat=n)]  # every one


def _expand(pattern: str, fills: list[str]) -> str:
    """`pattern` with each `*` replaced by the next fill (wrapping around)."""
    out, i = [], 0
    for char in pattern:
        if char == "*":
            out.append(fills[i % len(fills)])
            i += 1
        else:
            out.append(char)
    return "".join(out)


@hsettings(max_examples=500, deadline=None)
@given(ours=st.lists(glob_text, min_size=1, max_size=3), data=st.data())
def test_a_covered_pattern_matches_nothing_the_covering_ones_do_not(ours, data):
    fills = data.draw(st.lists(st.text(alphabet="ab:*?[]!", max_size=4), min_size=1, max_size=3))
    # asked for: one of ours with its `*`s filled in (often covered), or anything
    asked = data.draw(st.one_of(st.sampled_from(ours).map(lambda p: _expand(p, fills)), glob_text))
    layer = Layer(ours)
    if not layer.covers(asked):
        return
    narrow = Layer([asked])
    sids = [_expand(asked, f) for f in (fills, ["", "a"], [":", "b*"])] + SHORT_IDS
    for sid in sids:
        if narrow.allows(sid):
            assert layer.allows(sid), (ours, asked, sid)


def test_pattern_syntax_and_coverage_examples():
    layer = Layer(["hl1:*", "*:main"])
    assert layer.allows("hl1:depth") and layer.allows("hl2:main") and not layer.allows("hl2:depth")
    assert not layer.allows("HL1:depth")  # case matters
    assert Layer(["cam?"]).allows("cam1") and not Layer(["cam?"]).allows("cam10")
    assert Layer(["cam[12]"]).allows("cam2") and not Layer(["cam[!12]"]).allows("cam2")
    assert layer.covers("hl1:cam*") and layer.covers("hl1:*") and layer.covers("*x:main")
    assert not layer.covers("hl*") and not layer.covers("*")
    assert not Layer(["hl1:?"]).covers("hl1:*")  # `?` matches the character `*`, not any run
    assert not Layer(["a*]"]).covers("a[x]")  # brackets are never taken literally
    assert not layer.covers("hl1:[ab]")  # only identical, or `*`
    assert Layer(["*"]).covers("hl1:[ab]") and Layer(["hl1:[ab]"]).covers("hl1:[ab]")
    scope = Scope.of(Rights(("hl1:*",), (), False), Rights(("*:main",), ("*",), True))
    assert scope.can_read("hl1:main") and not scope.can_read("hl1:depth") and not scope.can_read("hl2:main")
    assert not scope.can_write("hl1:main") and not scope.admin


# -- what clients show -----------------------------------------------------------------------------

def test_the_python_client_raises_forbidden_with_the_reason(lab):
    from ptgstore.client import AuthError, Client, Forbidden, StreamClosed, StreamForbidden

    with Client(lab.url, username="viewer", password="viewer") as viewer:
        assert viewer.streams() == ["hl1:main", "hl2:main"]
        assert viewer.permissions()["read"] == ["*:main"]
        with pytest.raises(Forbidden) as refused:
            viewer.latest("lab:imu")
        assert refused.value.status == 403 and refused.value.detail == "forbidden: no read permission on stream 'lab:imu'"
        assert isinstance(refused.value, AuthError)  # code that caught AuthError still does
        with pytest.raises(Forbidden, match="no write permission on stream 'hl1:main'"):
            viewer.push("hl1:main", [b"x"])  # one entry: an HTTP upload
        with pytest.raises(StreamForbidden) as closed:
            viewer.push("hl1:main", [b"x", b"y"])  # several: a push socket
        assert closed.value.code == 1008 and "no write permission on stream 'hl1:main'" in str(closed.value)
        assert isinstance(closed.value, StreamClosed) and isinstance(closed.value, Forbidden)
        with pytest.raises(StreamForbidden):
            list(viewer.pull("hl1:main+lab:imu", last_entry_id="0", limit=1))
        narrow = viewer.derive_token(read=["hl1:main"], ttl=60)
        with pytest.raises(Forbidden, match="more than"):
            viewer.derive_token(read=["*"])
    with Client(lab.url, token=narrow) as narrowed:
        assert narrowed.streams() == ["hl1:main"]
        assert [e.data for e in narrowed.latest("hl1:main")] == [JPEG]


# -- every route of the routing table x the three users ------------------------------------------------

from starlette.routing import Route, WebSocketRoute  # noqa: E402

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
    ("GET", "/recordings/{rec_id:path}"): ("/recordings/mains", {}, {V, A}),
    ("GET", "/recordings/static/{rec_id}/{name:path}"): ("/recordings/static/mains/info.json", {}, {V, A}),
    ("PUT", "/recordings/start"): ("/recordings/start", {"params": {"sid": "hl1:main"}}, {V, A}),
    ("PUT", "/recordings/stop"): ("/recordings/stop", {}, EVERYONE),  # nothing is active: nothing to refuse
    ("PUT", "/recordings/{rec_id}/hide"): ("/recordings/mains/hide", {}, {A}),
    ("PUT", "/recordings/{rec_id}/unhide"): ("/recordings/mains/unhide", {}, {A}),
    ("POST", "/recordings/upload/{rec_id}/{name:path}"): ("/recordings/upload/mains/notes.txt",
                                                          {"files": [("f", ("f", b"notes"))]}, {A}),
    ("DELETE", "/recordings/cache"): ("/recordings/cache", {}, {A}),
    ("PUT", "/recordings/{rec_id}/rename/{new_id:path}"): ("/recordings/spare/rename/spare2", {}, {A}),
    ("DELETE", "/recordings/{rec_id:path}"): ("/recordings/spare2", {}, {A}),
}
# route path -> (concrete path, query, the users allowed)
SOCKET_MATRIX = {
    "/data/{sid:path}/push": ("/data/hl1:main/push", {"ack": "true"}, {H, A}),
    "/data/{sid:path}/pull": ("/data/hl1:main/pull", {"last_entry_id": "0"}, {V, A}),
    "/recordings/replay": ("/recordings/replay", {"rec_id": "mains", "prefix": "copy-", "fullspeed": "true"}, {A}),
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
    for route, (path, query, allowed) in SOCKET_MATRIX.items():
        for user in (H, V, A):
            outcome = _socket_outcome(lab, lab.token(user), path, query)
            if user in allowed:
                assert outcome == "served", f"{user} refused {path}: {outcome}"
            else:
                assert outcome[0] == 1008 and outcome[1].startswith("forbidden:"), f"{user} on {path}: {outcome}"
