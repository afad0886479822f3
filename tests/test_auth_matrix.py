"""Every route x every kind of bad token x every place a token can travel.

The routes are taken from the application's own routing table, so a route added
later is refused without a token unless it is deliberately public (listed here).
"""
import re
import statistics
import time

import httpx
import jwt
import pytest
import websockets.exceptions
from starlette.routing import Mount, Route, WebSocketRoute
from websockets.sync.client import connect

from support.servers import SERVER_KEYS, live_server, make_settings

# public on purpose (PROTOCOL.md: /token, /ping and the docs); everything else needs a token
PUBLIC = {"/token", "/ping", "/ping/error", "/docs", "/docs/sockets", "/docs/static/{name}", "/openapi.json",
          "/asyncapi.json", "/"}  # "/": the dashboard's login form
PUBLIC_MOUNTS = {"/docs/static", "/static"}  # the dashboard's scripts and styles
# /metrics is protected like every other route (it also takes the configured metrics token)

# a request each protected REST route would accept with a good token
BODIES = {
    ("PUT", "/streams/{sid:path}"): {"content": b"{}", "headers": {"content-type": "application/json"}},
    ("POST", "/data/{sid:path}"): {"files": {"f": ("f", b"payload")}},
    ("POST", "/token/derive"): {"content": b"read=*", "headers": {"content-type": "application/x-www-form-urlencoded"}},
}
# answers that never end while the client reads: only their status is looked at
STREAMING = {("GET", "/mjpeg/{sid:path}")}


def rest_routes(app):
    out = []
    for route in app.routes:
        if isinstance(route, Route):
            for method in sorted(route.methods - {"HEAD"}):
                out.append((method, route.path))
    return out


def ws_routes(app):
    return [route.path for route in app.routes if isinstance(route, WebSocketRoute)]


PARAMETERS = {"rec_id": "authrec", "new_id": "authrec2", "name": "info.json", "sid": "authcam"}


def concrete(path: str) -> str:
    return re.sub(r"{(\w+)(:\w+)?}", lambda m: PARAMETERS[m.group(1)], path)


def bad_tokens(secret: str) -> dict:
    now = int(time.time())
    good = {"sub": "test", "iat": now, "exp": now + 600}
    valid = jwt.encode(good, secret, algorithm="HS256")
    head, payload, signature = valid.split(".")
    return {
        "malformed": "not-a-jwt",
        "empty segments": "..",
        "garbage base64": "eyJhbGciOiJIUzI1NiJ9.%%%%.abc",
        "expired": jwt.encode({**good, "exp": now - 10}, secret, algorithm="HS256"),
        "not yet valid": jwt.encode({**good, "nbf": now + 3600}, secret, algorithm="HS256"),
        "wrong secret": jwt.encode(good, "someone else's secret, long enough to be quiet", algorithm="HS256"),
        "alg none": jwt.encode(good, None, algorithm="none"),
        "alg none, signature kept": jwt.encode(good, None, algorithm="none") + signature,
        "wrong algorithm HS512": jwt.encode(good, secret, algorithm="HS512"),
        "wrong algorithm HS384": jwt.encode(good, secret, algorithm="HS384"),
        "truncated signature": valid[:-4],
        "payload swapped": ".".join([head, jwt.encode({**good, "sub": "admin"}, "another secret of thirty-two bytes!", algorithm="HS256")
                                     .split(".")[1], signature]),
        "no subject": jwt.encode({"iat": now, "exp": now + 600}, secret, algorithm="HS256"),
        "empty subject": jwt.encode({**good, "sub": ""}, secret, algorithm="HS256"),
        "numeric subject": jwt.api_jws.encode(b'{"sub":7,"exp":%d}' % (now + 600), secret, algorithm="HS256"),
    }


def placed(token: str | None, place: str) -> dict:
    """httpx/websockets request options that carry `token` in `place`."""
    if token is None:
        return {"headers": {}, "params": {}}
    if place == "header":
        return {"headers": {"Authorization": f"Bearer {token}"}, "params": {}}
    if place == "query":
        return {"headers": {}, "params": {"token": token}}
    return {"headers": {"Cookie": f'authorization="Bearer {token}"'}, "params": {}}


PLACES = ["header", "query", "cookie"]


def rest_call(client, method, path, token, place):
    options = placed(token, place)
    extra = BODIES.get((method, path), {})
    headers = {**options["headers"], **extra.get("headers", {})}
    client.cookies.clear()
    if (method, path) in STREAMING:
        with client.stream(method, concrete(path), params=options["params"], headers=headers) as reply:
            if reply.status_code != 200:
                reply.read()
        return reply
    return client.request(method, concrete(path), params=options["params"], headers=headers,
                          content=extra.get("content"), files=extra.get("files"))


def ws_handshake(server, path, token, place):
    """The HTTP status of the handshake: 101 when accepted."""
    options = placed(token, place)
    query = str(httpx.QueryParams(options["params"]))
    url = f"{server.ws_url}{concrete(path)}" + (f"?{query}" if query else "")
    try:
        with connect(url, additional_headers=options["headers"], open_timeout=10, close_timeout=2):
            return 101
    except websockets.exceptions.InvalidStatus as refused:
        return refused.response.status_code


def protected_rest(server):
    return [(m, p) for m, p in rest_routes(server.app) if p not in PUBLIC]


def test_the_matrix_covers_every_route(server):
    rest = rest_routes(server.app)
    paths = {p for _, p in rest}
    assert {"/streams", "/streams/{sid:path}", "/data/{sid:path}"} <= paths
    assert {("GET", "/data/{sid:path}"), ("POST", "/data/{sid:path}"), ("PUT", "/streams/{sid:path}"),
            ("DELETE", "/streams/{sid:path}")} <= set(rest)
    assert set(ws_routes(server.app)) == {"/data/{sid:path}/push", "/data/{sid:path}/pull", "/recordings/replay",
                                          "/foxglove"}
    mounts = {r.path for r in server.app.routes if isinstance(r, Mount)}
    assert mounts <= PUBLIC_MOUNTS, f"new mount {mounts - PUBLIC_MOUNTS}: add it to the auth matrix"


@pytest.mark.slow
def test_every_protected_rest_route_refuses_every_bad_token_everywhere(server, rdb):
    cases = [("no token", None, "header")]
    cases += [(name, token, place) for name, token in bad_tokens(server.app.state.authenticator.secret).items()
              for place in PLACES]
    with httpx.Client(base_url=server.url, timeout=10) as client:
        replies = [(f"{method} {path} with {name} in {place}", rest_call(client, method, path, token, place))
                   for method, path in protected_rest(server) for name, token, place in cases]
    for where, reply in replies:
        assert reply.status_code == 401, where
        assert reply.headers["www-authenticate"] == "Bearer", where
        assert reply.json()["detail"], where
    # nothing a refused request carried was stored
    assert sorted(rdb.keys("*")) == SERVER_KEYS


@pytest.mark.slow
def test_every_protected_rest_route_accepts_a_good_token_in_each_place(server, rdb):
    token = server.token()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        replies = [(method, path, place, rest_call(client, method, path, token, place))
                   for method, path in protected_rest(server) for place in PLACES]
    for method, path, place, reply in replies:
        if path.startswith("/recordings/"):
            # their answers depend on which recordings exist (404, 409): only the token is checked here
            assert reply.status_code not in (401, 403), f"{method} {path} with a good token in {place}: {reply.text}"
            continue
        assert reply.status_code == 200, f"{method} {path} with a good token in {place}: {reply.text}"


def test_every_websocket_route_refuses_every_bad_token_at_the_handshake(server, rdb):
    cases = [("no token", None, "header")]
    cases += [(name, token, place) for name, token in bad_tokens(server.app.state.authenticator.secret).items()
              for place in PLACES]
    for path in ws_routes(server.app):
        for name, token, place in cases:
            assert ws_handshake(server, path, token, place) == 401, f"{path} with {name} in {place}"
    assert sorted(rdb.keys("*")) == SERVER_KEYS


def test_every_websocket_route_accepts_a_good_token_in_each_place(server):
    for path in ws_routes(server.app):
        for place in PLACES:
            assert ws_handshake(server, path, server.token(), place) == 101, f"{path} with a good token in {place}"


def test_a_bad_token_is_not_rescued_by_a_good_one_further_down(server):
    # the header is looked at first; a refused header token ends the check (no fallback guessing)
    secret = server.app.state.authenticator.secret
    good = server.token()
    bad = bad_tokens(secret)["wrong secret"]
    reply = httpx.get(server.url + "/streams", params={"token": good},
                      headers={"Authorization": f"Bearer {bad}", "Cookie": f"authorization={good}"})
    assert reply.status_code == 401
    reply = httpx.get(server.url + "/streams", params={"token": bad}, headers={"Cookie": f"authorization={good}"})
    assert reply.status_code == 401


def test_other_authorization_schemes_are_not_tokens(server):
    for value in (f"Basic {server.token()}", "Bearer", "Bearer  x.y.z", f"Token {server.token()}", server.token()):
        reply = httpx.get(server.url + "/streams", headers={"Authorization": value})
        assert reply.status_code == 401, value


@pytest.mark.slow
def test_public_routes_answer_whatever_token_is_sent(server):
    # a client holding an expired or foreign token must still be able to log in again and ping
    stale = bad_tokens(server.app.state.authenticator.secret)
    for name in ("expired", "wrong secret", "alg none", "malformed"):
        for place in PLACES:
            options = placed(stale[name], place)
            login = httpx.post(server.url + "/token", params=options["params"], headers=options["headers"],
                               data={"username": "u", "password": "u"})
            assert login.status_code == 200, (name, place)
            ping = httpx.get(server.url + "/ping", params=options["params"], headers=options["headers"])
            assert ping.status_code == 200 and ping.json() is True, (name, place)
    assert httpx.get(server.url + "/openapi.json").status_code == 200
    assert httpx.get(server.url + "/docs").status_code == 200
    page = httpx.get(server.url + "/", headers={"Cookie": f"authorization={stale['expired']}"})
    assert page.status_code == 200 and '<meta name="ptgstore-user" content="">' in page.text  # the login form
    assert httpx.get(server.url + "/static/ptgstore.js").status_code == 200


def test_expiry_is_enforced_to_the_second(server):
    secret = server.app.state.authenticator.secret
    now = int(time.time())
    nearly = jwt.encode({"sub": "t", "exp": now + 30}, secret, algorithm="HS256")
    just_gone = jwt.encode({"sub": "t", "exp": now - 2}, secret, algorithm="HS256")
    assert httpx.get(server.url + "/streams", headers={"Authorization": f"Bearer {nearly}"}).status_code == 200
    assert httpx.get(server.url + "/streams", headers={"Authorization": f"Bearer {just_gone}"}).status_code == 401


# -- the users policy ---------------------------------------------------------------------------------

@pytest.fixture
def users_server(tmp_path, rdb, redis_server):
    from ptgstore.auth import hash_password, write_users

    # (more logins a minute than the default rate allows: tests/test_guards.py checks the limit)
    settings = make_settings(tmp_path, redis_server.url, auth="users", login_rate=1000)
    write_users(settings.users_path, {"alice": hash_password("correct horse"), "bob": hash_password("bob")})
    with live_server(settings) as live:
        yield live


def login(server, username, password):
    return httpx.post(server.url + "/token", data={"username": username, "password": password}, timeout=30)


@pytest.mark.slow
def test_users_policy_refusals_are_indistinguishable(users_server):
    refusals = [
        login(users_server, "alice", "wrong"),
        login(users_server, "alice", ""),
        login(users_server, "alice", "alice"),  # the dev policy's rule does not apply
        login(users_server, "mallory", "correct horse"),
        login(users_server, "Alice", "correct horse"),
        login(users_server, "alice ", "correct horse"),
        login(users_server, "mallory", "mallory"),
    ]
    for reply in refusals:
        assert reply.status_code == 401
        assert reply.headers["www-authenticate"] == "Bearer"
        assert "set-cookie" not in reply.headers
    assert len({r.content for r in refusals}) == 1
    assert login(users_server, "alice", "correct horse").status_code == 200
    assert login(users_server, "bob", "bob").status_code == 200


@pytest.mark.slow
def test_users_policy_does_not_answer_unknown_users_faster(users_server):
    # both refusals run the same scrypt check: a missing user costs as much as a wrong password
    # (without the dummy hash an unknown user is answered ~50x faster, so the bound is generous)
    def timed(username):
        start = time.perf_counter()
        assert login(users_server, username, "guess").status_code == 401
        return time.perf_counter() - start

    login(users_server, "warm", "up")
    wrong = statistics.median(timed("alice") for _ in range(7))
    unknown = statistics.median(timed("nobody") for _ in range(7))
    assert unknown > wrong / 3, f"unknown user {unknown * 1000:.1f} ms vs wrong password {wrong * 1000:.1f} ms"


def test_a_generated_secret_is_never_seen_empty_by_a_concurrent_reader(tmp_path):
    # two threads (or workers) asking for the secret at once must agree on one non-empty secret
    import threading

    from ptgstore.auth import load_or_create_secret
    from ptgstore.settings import Settings

    for round_ in range(20):
        settings = Settings(data_dir=str(tmp_path / f"data{round_}"))
        barrier = threading.Barrier(8)
        seen, failures = [], []

        def read():
            barrier.wait(10)
            try:
                seen.append(load_or_create_secret(settings))
            except Exception as exc:  # reported below with the round
                failures.append(exc)

        threads = [threading.Thread(target=read) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert not failures, f"round {round_}: {failures[0]!r}"
        assert len(seen) == 8 and len(set(seen)) == 1 and len(seen[0]) >= 32, f"round {round_}"
        assert sorted(p.name for p in (tmp_path / f"data{round_}").iterdir()) == ["secret"]


# -- anything at all in the credential headers ----------------------------------------------------------

from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402

header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                      max_size=80)


def mutated(token: str, position: int, replacement: str) -> str:
    """`token` with one character of its header or payload changed (never the signature's last
    character, whose spare bits do not change the decoded signature)."""
    signed_part = token.rsplit(".", 1)[0]
    i = position % len(signed_part)
    if signed_part[i] == "." or signed_part[i] == replacement:
        replacement = "A" if signed_part[i] != "A" else "B"
        if signed_part[i] == ".":
            i -= 1
    return token[:i] + replacement + token[i + 1:]


@pytest.mark.slow
def test_arbitrary_credentials_never_let_anyone_in(tmp_path, rdb, redis_server):
    with live_server(make_settings(tmp_path, redis_server.url)) as live, \
            httpx.Client(base_url=live.url, timeout=10) as client:
        good = live.token()

        @hsettings(max_examples=150, deadline=None)
        @given(authorization=st.one_of(header_text, header_text.map(lambda t: "Bearer " + t)),
               cookie=st.one_of(header_text, header_text.map(lambda t: f'authorization="Bearer {t}"')),
               query=st.text(max_size=60), position=st.integers(0, 10_000),
               replacement=st.sampled_from("AZaz09+/-_=."), place=st.sampled_from(PLACES + ["random"]))
        def probe(authorization, cookie, query, position, replacement, place):
            if place == "random":
                # (HTTP allows no surrounding whitespace in a header value: the client would refuse to send it)
                headers = {"Authorization": authorization.strip(" \t").encode("latin-1"),
                           "Cookie": cookie.strip(" \t").encode("latin-1")}
                options = {"headers": headers, "params": {"token": query}}
            else:
                options = placed(mutated(good, position, replacement), place)
            client.cookies.clear()
            reply = client.get("/streams", headers=options["headers"], params=options["params"])
            assert reply.status_code == 401, (options, reply.text)
            assert reply.json()["detail"]

        probe()
        # and the server still answers a good token
        assert client.get("/streams", headers={"Authorization": f"Bearer {good}"}).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("level", ["info", "debug"])
def test_tokens_and_passwords_never_reach_the_log(tmp_path, rdb, redis_server, level):
    import logging

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.lines = []

        def emit(self, record):
            self.lines.append(self.format(record))

    collect = Collect()
    loggers = [logging.getLogger(name) for name in ("ptgstore", "uvicorn", "uvicorn.error", "uvicorn.access")]
    # uvicorn logs each WebSocket's path with its query string, and at debug the handshake headers
    with live_server(make_settings(tmp_path, redis_server.url, log_level=level)) as live:
        for logger in loggers:
            logger.addHandler(collect)
        previous = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(level.upper())
        try:
            password = "pass-word-never-logged"
            login(live, password, password)
            login(live, "someone", password)
            secrets_sent = [password, live.token()]
            for name, token in bad_tokens(live.app.state.authenticator.secret).items():
                secrets_sent.append(token)
                for place in PLACES:
                    options = placed(token, place)
                    httpx.get(live.url + "/streams", params=options["params"], headers=options["headers"])
                    ws_handshake(live, "/data/{sid:path}/pull", token, place)
            for place in PLACES:
                options = placed(secrets_sent[1], place)
                httpx.get(live.url + "/streams", params=options["params"], headers=options["headers"])
                ws_handshake(live, "/data/{sid:path}/push", secrets_sent[1], place)
        finally:
            for logger, level in zip(loggers, previous):
                logger.removeHandler(collect)
                logger.setLevel(level)
    text = "\n".join(collect.lines)
    assert "status=401" in text and "ws_refused" in text  # the requests were logged, just not their secrets
    for secret in secrets_sent:
        # whole tokens, and their signatures alone (the part that makes them usable)
        for part in {secret, secret.rsplit(".", 1)[-1]}:
            if len(part) >= 8:
                assert part not in text, f"logged: {part[:20]}..."
