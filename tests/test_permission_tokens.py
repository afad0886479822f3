"""Tokens can only be narrowed: POST /token/derive, `ptgstore token`, a changed account, forged
claims, the pattern coverage rule, and what the Python client shows."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time

import httpx
import jwt
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from support.permissionlab import JPEG, SEEDED, client, derive, forbidden, socket_refusal
from ptgstore.permissions import Layer, Rights, Scope
from support.ws import ws_connect

# -- narrowed tokens ------------------------------------------------------------------------------

@pytest.mark.slow
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


@pytest.mark.slow
def test_hostile_derive_requests_get_a_reason_and_change_nothing(lab):
    admin = lab.token("admin")
    headers = {"Authorization": f"Bearer {admin}"}
    many = "&".join(f"read=p{i}" for i in range(33))
    form = {**headers, "content-type": "application/x-www-form-urlencoded"}
    assert httpx.post(lab.url + "/token/derive", headers=form, content=many).status_code == 400
    for body in ({"read": [{"a": 1}]}, {"read": ["x" * 300]}, {"read": [f"{i}" + "x" * 200 for i in range(12)]}, {"read": ["*"], "ttl": True},
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


@pytest.mark.slow
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

def ptgstore(data_dir, *args, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", "ptgstore", *args, "--data-dir", data_dir], input=stdin,
                          text=True, capture_output=True, timeout=60, env=env)


def test_user_add_takes_the_password_from_the_environment(tmp_path):
    from ptgstore.users import password_of, read_users, verify_password

    data_dir = str(tmp_path / "data")
    env = {**os.environ, "PTGSTORE_PASSWORD": "from the environment"}
    assert ptgstore(data_dir, "user", "add", "bob", "--write", "hl1:*", env=env, stdin="").returncode == 0
    stored = password_of(read_users(tmp_path / "data" / "users.json")["bob"])
    assert verify_password("from the environment", stored) and not verify_password("other", stored)


@pytest.mark.slow
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


@pytest.mark.slow
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
    return {k: v for k, v in os.environ.items() if not k.startswith("PTGSTORE_")}


# -- the pattern rules ----------------------------------------------------------------------------

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


@pytest.mark.slow
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

