"""POST /token, the credential policies, and every way a token is found or refused."""
import base64
import json
import os
import subprocess
import sys
import time

import httpx
import jwt
import pytest
import websockets.exceptions
from websockets.sync.client import connect

from ptgstore.auth import Authenticator, hash_password, read_users, verify_password
from ptgstore.serving import GracefulWebSocketProtocol

from support.servers import SERVER_KEYS, LiveServer, live_server, make_settings


def login(server, username, password):
    return httpx.post(server.url + "/token", data={"username": username, "password": password})


def test_dev_policy_issues_a_token_and_a_cookie(server):
    reply = login(server, "test", "test")
    assert reply.status_code == 200
    body = reply.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 24 * 3600
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "test" and claims["exp"] - claims["iat"] == 30 * 24 * 3600
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith('authorization="Bearer ' + body["access_token"] + '"')
    assert "HttpOnly" in cookie and f"Max-Age={30 * 24 * 3600}" in cookie


@pytest.mark.parametrize("username,password,status", [("test", "nope", 401), ("", "", 400), ("a", "A", 401)])
def test_dev_policy_refuses_other_pairs(server, username, password, status):
    reply = login(server, username, password)
    assert reply.status_code == status  # an empty username is malformed (400, as the error table says)
    assert "detail" in reply.json()


@pytest.mark.parametrize("body", [{}, {"username": "test"}, {"password": "test"}, {"username": "", "password": "x"}])
def test_token_form_without_its_fields_is_a_400(server, body):
    for reply in (httpx.post(server.url + "/token", data=body), httpx.post(server.url + "/token", json=body)):
        assert reply.status_code == 400 and "required" in reply.json()["detail"]


@pytest.mark.slow
def test_tokens_decode_with_the_standard_base64_alphabet(server):
    # a widely used client decodes header and payload with standard base64: no '-' or '_'
    for i in range(40):
        name = f"user{i}" + "~?>\x7f\u00e9"[: i % 6] * (i % 4 + 1)
        token = login(server, name, name).json()["access_token"]
        head, payload, _ = token.split(".")
        for segment in (head, payload):
            assert "-" not in segment and "_" not in segment
            decoded = json.loads(base64.b64decode(segment + "=" * (-len(segment) % 4)))
            assert isinstance(decoded, dict)
        assert json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))["sub"] == name


@pytest.fixture
def users_server(tmp_path, rdb, redis_server):
    settings = make_settings(tmp_path, redis_server.url, auth="users")
    subprocess.run([sys.executable, "-m", "ptgstore", "user", "add", "alice", "--password-stdin",
                    "--data-dir", settings.data_dir], input="s3cret pass\n", text=True, check=True, timeout=60)
    with live_server(settings) as live:
        yield live


def test_users_policy_accepts_an_account_and_stores_no_plain_text(users_server):
    assert login(users_server, "alice", "s3cret pass").status_code == 200
    text = users_server.settings.users_path.read_text()
    assert "s3cret" not in text
    stored = read_users(users_server.settings.users_path)["alice"]
    assert verify_password("s3cret pass", stored) and not verify_password("s3cret", stored)


def test_users_policy_answers_unknown_user_and_wrong_password_alike(users_server):
    wrong = login(users_server, "alice", "guess")
    unknown = login(users_server, "mallory", "guess")
    dev_style = login(users_server, "alice", "alice")
    for reply in (wrong, unknown, dev_style):
        assert reply.status_code == 401
        assert reply.headers["www-authenticate"] == "Bearer"
    assert wrong.content == unknown.content == dev_style.content


def test_password_hashes_are_salted():
    assert hash_password("same") != hash_password("same")


# -- where a token is found ------------------------------------------------------------------------

def test_token_in_header_query_and_cookie(server):
    token = server.token()
    ok = [
        httpx.get(server.url + "/streams", headers={"Authorization": f"Bearer {token}"}),
        httpx.get(server.url + "/streams", params={"token": token}),
        httpx.get(server.url + "/streams", headers={"Cookie": f'authorization="Bearer {token}"'}),
        httpx.get(server.url + "/streams", headers={"Cookie": f"authorization=Bearer {token}"}),
        httpx.get(server.url + "/streams", headers={"Cookie": f"authorization={token}"}),
        httpx.get(server.url + "/streams", headers={"Cookie": f'other=1; authorization="{token}"'}),
    ]
    assert [r.status_code for r in ok] == [200] * len(ok)


def test_cookie_from_login_authenticates_the_next_request(server):
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/token", data={"username": "u", "password": "u"}).status_code == 200
        assert client.get("/streams").status_code == 200


# -- refusals ----------------------------------------------------------------------------------------

def refusal_tokens(server):
    secret = server.app.state.authenticator.secret
    now = int(time.time())
    good = {"sub": "test", "iat": now, "exp": now + 60}
    none_token = jwt.encode(good, None, algorithm="none")
    return {
        "missing": None,
        "malformed": "not-a-jwt",
        "expired": jwt.encode({**good, "exp": now - 10}, secret, algorithm="HS256"),
        "wrong secret": jwt.encode(good, "someone else's secret, long enough for HS256", algorithm="HS256"),
        "alg none": none_token,
        "wrong algorithm": jwt.encode(good, secret, algorithm="HS512"),
        "no subject": jwt.encode({"iat": now, "exp": now + 60}, secret, algorithm="HS256"),
    }


@pytest.mark.parametrize("path", ["/streams", "/streams/cam", "/data/cam"])
def test_rest_refusals_are_401_with_bearer_challenge(server, path):
    for case, token in refusal_tokens(server).items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        reply = httpx.get(server.url + path, headers=headers)
        assert reply.status_code == 401, case
        assert reply.headers["www-authenticate"] == "Bearer", case
        assert reply.json()["detail"], case


@pytest.mark.parametrize("route", ["push", "pull"])
def test_websocket_refusals_fail_the_handshake(server, route):
    for case, token in refusal_tokens(server).items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with pytest.raises(websockets.exceptions.InvalidStatus) as caught:
            connect(f"{server.ws_url}/data/cam/{route}", additional_headers=headers, open_timeout=5)
        response = caught.value.response
        assert response.status_code == 401, case
        assert response.headers["WWW-Authenticate"] == "Bearer", case
        assert response.headers["Content-Type"] == "application/json", case
        detail = json.loads(response.body)["detail"]
        assert ("token" in detail or "signature" in detail or "algorithm" in detail
                or "subject" in detail), (case, detail)


def test_websocket_refusal_says_why(server):
    expired = jwt.encode({"sub": "test", "exp": int(time.time()) - 5}, server.app.state.authenticator.secret,
                         algorithm="HS256")
    with pytest.raises(websockets.exceptions.InvalidStatus) as caught:
        connect(f"{server.ws_url}/data/cam/pull?token={expired}", open_timeout=5)
    assert caught.value.response.status_code == 401
    assert json.loads(caught.value.response.body) == {"detail": "token expired"}
    with pytest.raises(websockets.exceptions.InvalidStatus) as caught:
        connect(f"{server.ws_url}/data/cam/push", open_timeout=5)
    assert json.loads(caught.value.response.body) == {
        "detail": "not authenticated: no token in header, query or cookie"}


class NoDenialProtocol(GracefulWebSocketProtocol):
    """The server's WebSocket protocol without the ASGI denial-response extension, as on a server
    that does not offer it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        application = self.app

        async def without_extension(scope, receive, send):
            scope = {key: value for key, value in scope.items() if key != "extensions"}
            await application(scope, receive, send)

        self.app = without_extension


def test_websocket_refusal_without_the_denial_extension_is_a_bare_403(tmp_path, rdb, redis_server):
    live = LiveServer(make_settings(tmp_path, redis_server.url))
    live.server.config.ws = NoDenialProtocol
    live.start()
    try:
        with pytest.raises(websockets.exceptions.InvalidStatus) as caught:
            connect(f"{live.ws_url}/data/cam/push?token=forged", open_timeout=5)
        assert caught.value.response.status_code == 403
        with connect(f"{live.ws_url}/data/cam/push?ack=true&token={live.token()}", open_timeout=5) as ws:
            ws.send(b"x")
            assert ws.recv(timeout=5).count("-") == 1
    finally:
        live.stop()


def test_websocket_token_in_query(server):
    with connect(f"{server.ws_url}/data/cam/push?ack=true&token={server.token()}", open_timeout=5) as ws:
        ws.send(b"x")
        assert ws.recv(timeout=5).count("-") == 1


def test_cookie_only_websocket_needs_an_allowed_origin(server):
    cookie = {"Cookie": f'authorization="Bearer {server.token()}"'}
    own = {"Origin": server.url, **cookie}
    foreign = {"Origin": "https://evil.example", **cookie}
    with connect(f"{server.ws_url}/data/cam/push", additional_headers=own, open_timeout=5):
        pass
    with connect(f"{server.ws_url}/data/cam/push", additional_headers=cookie, open_timeout=5):
        pass  # no Origin: not a browser
    with pytest.raises(websockets.exceptions.InvalidStatus) as caught:
        connect(f"{server.ws_url}/data/cam/push", additional_headers=foreign, open_timeout=5)
    assert caught.value.response.status_code == 403
    assert "origin" in json.loads(caught.value.response.body)["detail"]
    # a token in the header is not a browser's ambient credential: any origin may use it
    header = {"Origin": "https://evil.example", "Authorization": f"Bearer {server.token()}"}
    with connect(f"{server.ws_url}/data/cam/push", additional_headers=header, open_timeout=5):
        pass


def cookie_headers(server, **extra) -> dict:
    return {"Cookie": f'authorization="Bearer {server.token()}"', **extra}


def state_changing_calls(client, headers):
    """Every state-changing REST route, each with a body it would accept."""
    return [
        ("PUT", client.put("/streams/csrf", json={"k": 1}, headers=headers)),
        ("POST", client.post("/data/csrf", files=[("f", ("f", b"x"))], headers=headers)),
        ("DELETE", client.delete("/streams/csrf", headers=headers)),
    ]


def test_cookie_only_writes_from_another_site_are_refused(server, rdb):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for foreign in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                        {"Referer": "https://evil.example/page.html"},
                        {"Origin": "https://evil.example", "Referer": server.url + "/docs"}):
            for method, reply in state_changing_calls(client, cookie_headers(server, **foreign)):
                assert reply.status_code == 403, (method, foreign)
                assert "cross-site" in reply.json()["detail"], (method, foreign)
                assert "www-authenticate" not in reply.headers
        assert sorted(rdb.keys("*")) == SERVER_KEYS  # nothing changed
        # reads are not state-changing; PATCH is refused too (it reaches no route: 405 after the check)
        assert client.get("/streams", headers=cookie_headers(server, Origin="https://evil.example")).status_code == 200
        patch = client.patch("/streams/csrf", headers=cookie_headers(server, Origin="https://evil.example"))
        assert patch.status_code == 403


def test_cookie_writes_from_the_own_origin_and_token_writes_from_anywhere_work(server, rdb):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for own in ({"Origin": server.url}, {"Referer": server.url + "/dashboard/index.html"}, {}):
            for method, reply in state_changing_calls(client, cookie_headers(server, **own)):
                assert reply.status_code == 200, (method, own, reply.text)
        token = {"Authorization": f"Bearer {server.token()}", "Origin": "https://evil.example"}
        for method, reply in state_changing_calls(client, token):
            assert reply.status_code == 200, (method, reply.text)
        query = client.put("/streams/csrf", params={"token": server.token()}, json={},
                           headers={"Origin": "https://evil.example"})
        assert query.status_code == 200
        # /token is refused from another site too: it would set the cookie (login CSRF, tests/test_guards.py)
        login = client.post("/token", data={"username": "u", "password": "u"},
                            headers=cookie_headers(server, Origin="https://evil.example"))
        assert login.status_code == 403


def test_cookie_is_samesite_lax_and_httponly(server):
    cookie = login(server, "test", "test").headers["set-cookie"]
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert "samesite=lax" in attributes and "httponly" in attributes


def test_configured_origin_is_allowed(tmp_path, rdb, redis_server):
    settings = make_settings(tmp_path, redis_server.url, ws_allowed_origins=("https://lab.example",))
    with live_server(settings) as live:
        headers = {"Origin": "https://lab.example", "Cookie": f"authorization={live.token()}"}
        with connect(f"{live.ws_url}/data/cam/push", additional_headers=headers, open_timeout=5):
            pass
        assert httpx.put(live.url + "/streams/cam", json={}, headers=headers).status_code == 200
        other = {**headers, "Origin": "https://other.example"}
        assert httpx.put(live.url + "/streams/cam", json={}, headers=other).status_code == 403


# the original's short secret: pyjwt 2.10+ warns about it (and only those versions know the warning's class)
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning" if hasattr(jwt.warnings, "InsecureKeyLengthWarning")
                            else "default")
def test_original_servers_tokens_accepted_when_configured(tmp_path, rdb, redis_server):
    original_secret = "the original server's secret"
    # as minted by the original server long ago: expired, and with '-'/'_' segments allowed
    old = jwt.encode({"sub": "hololens", "exp": 1_600_000_000}, original_secret, algorithm="HS256")
    strict = make_settings(tmp_path, redis_server.url, secret=original_secret)
    with live_server(strict) as live:
        assert httpx.get(live.url + "/streams", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    lenient = strict.replace(token_verify_exp=False)
    with live_server(lenient) as live:
        assert httpx.get(live.url + "/streams", headers={"Authorization": f"Bearer {old}"}).status_code == 200
        forged = jwt.encode({"sub": "x", "exp": 1_600_000_000}, "a guess at the secret, 32 bytes or more", algorithm="HS256")
        assert httpx.get(live.url + "/streams", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_secret_is_generated_once_and_kept(tmp_path):
    settings = make_settings(tmp_path, None)
    first = Authenticator(settings).secret
    assert len(first) >= 32
    assert Authenticator(settings).secret == first
    assert (tmp_path / "data" / "secret").stat().st_mode & 0o077 == 0


def test_token_command_prints_a_token_the_server_accepts(server):
    out = subprocess.run([sys.executable, "-m", "ptgstore", "token", "--user", "lab",
                          "--data-dir", server.settings.data_dir], capture_output=True, text=True, check=True,
                         timeout=60).stdout.strip()
    reply = httpx.get(server.url + "/streams", headers={"Authorization": f"Bearer {out}"})
    assert reply.status_code == 200
    assert jwt.decode(out, options={"verify_signature": False})["sub"] == "lab"


# -- tokens end with the account or policy they were issued under ---------------------------------

def ptgstore_cli(data_dir, *args, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", "ptgstore", *args, "--data-dir", data_dir], input=stdin,
                          text=True, capture_output=True, timeout=60, env=env)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.slow
def test_dev_tokens_are_refused_once_the_users_policy_is_in_force(tmp_path, rdb, redis_server):
    dev = make_settings(tmp_path, redis_server.url)
    with live_server(dev) as live:
        anyone = login(live, "mallory", "mallory").json()["access_token"]
        alice_dev = login(live, "alice", "alice").json()["access_token"]
        assert httpx.get(live.url + "/streams", headers=bearer(anyone)).status_code == 200
    ptgstore_cli(dev.data_dir, "user", "add", "alice", "--password-stdin", stdin="s3cret pass\n")
    with live_server(dev.replace(auth="users")) as live:  # same data directory, same secret
        for token in (anyone, alice_dev):  # alice exists now, but her token is of the dev policy
            refused = httpx.get(live.url + "/streams", headers=bearer(token))
            assert refused.status_code == 401 and "'dev' policy" in refused.json()["detail"]
            with pytest.raises(websockets.exceptions.InvalidStatus) as caught:
                connect(f"{live.ws_url}/data/cam/pull?token={token}", open_timeout=5)
            assert caught.value.response.status_code == 401
        users_token = login(live, "alice", "s3cret pass").json()["access_token"]
        assert httpx.get(live.url + "/streams", headers=bearer(users_token)).status_code == 200
    with live_server(dev) as live:  # and back: a users token is not one of the dev policy
        refused = httpx.get(live.url + "/streams", headers=bearer(users_token))
        assert refused.status_code == 401 and "'users' policy" in refused.json()["detail"]


@pytest.mark.slow
def test_a_removed_users_tokens_are_refused_at_the_next_request(users_server):
    data_dir = users_server.settings.data_dir
    token = login(users_server, "alice", "s3cret pass").json()["access_token"]
    assert httpx.get(users_server.url + "/streams", headers=bearer(token)).status_code == 200
    with connect(f"{users_server.ws_url}/data/cam/pull?token={token}", open_timeout=5):
        pass
    removed = ptgstore_cli(data_dir, "user", "remove", "alice")
    assert removed.returncode == 0, removed.stderr
    refused = httpx.get(users_server.url + "/streams", headers=bearer(token))
    assert refused.status_code == 401 and "no longer exists" in refused.json()["detail"]
    with pytest.raises(websockets.exceptions.InvalidStatus) as caught:
        connect(f"{users_server.ws_url}/data/cam/pull?token={token}", open_timeout=5)
    assert caught.value.response.status_code == 401
    assert "no longer exists" in json.loads(caught.value.response.body)["detail"]
    # the same name added again is a new account: the old token stays refused
    ptgstore_cli(data_dir, "user", "add", "alice", "--password-stdin", stdin="another pass\n")
    refused = httpx.get(users_server.url + "/streams", headers=bearer(token))
    assert refused.status_code == 401 and "password changed" in refused.json()["detail"]


@pytest.mark.slow
def test_a_password_change_revokes_the_earlier_tokens(users_server):
    data_dir = users_server.settings.data_dir
    old = login(users_server, "alice", "s3cret pass").json()["access_token"]
    ptgstore_cli(data_dir, "user", "add", "bob", "--password-stdin", stdin="bob's pass\n")
    bob = login(users_server, "bob", "bob's pass").json()["access_token"]
    changed = ptgstore_cli(data_dir, "user", "add", "alice", "--password-stdin", stdin="new pass\n")
    assert changed.returncode == 0, changed.stderr
    refused = httpx.get(users_server.url + "/streams", headers=bearer(old))
    assert refused.status_code == 401 and "password changed" in refused.json()["detail"]
    new = login(users_server, "alice", "new pass").json()["access_token"]
    assert httpx.get(users_server.url + "/streams", headers=bearer(new)).status_code == 200
    assert httpx.get(users_server.url + "/streams", headers=bearer(bob)).status_code == 200  # others keep theirs


@pytest.mark.slow
def test_cli_tokens_under_the_users_policy_work_and_carry_no_dash(users_server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTGSTORE_")}
    env["PTGSTORE_AUTH"] = "users"
    minted = ptgstore_cli(users_server.settings.data_dir, "token", "--user", "alice", env=env)
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    head, payload, _ = token.split(".")
    assert "-" not in head + payload and "_" not in head + payload
    claims = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["pol"] == "users" and len(claims["gen"]) == 16
    assert httpx.get(users_server.url + "/streams", headers=bearer(token)).status_code == 200


@pytest.mark.slow
def test_tokens_without_a_policy_claim_need_an_existing_user(users_server):
    # minted before tokens carried `pol` (or by the original server): judged by the account alone
    secret = users_server.app.state.authenticator.secret
    exp = int(time.time()) + 600
    alice = jwt.encode({"sub": "alice", "exp": exp}, secret, algorithm="HS256")
    ghost = jwt.encode({"sub": "ghost", "exp": exp}, secret, algorithm="HS256")
    assert httpx.get(users_server.url + "/streams", headers=bearer(alice)).status_code == 200
    assert httpx.get(users_server.url + "/streams", headers=bearer(ghost)).status_code == 401
    ptgstore_cli(users_server.settings.data_dir, "user", "remove", "alice")
    assert httpx.get(users_server.url + "/streams", headers=bearer(alice)).status_code == 401
