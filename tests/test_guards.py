"""The request guards (ptgstore/guards.py): Host allow-list, security headers, login CSRF and rate."""
import socket
import subprocess
import sys

import httpx
import pytest

from ptgstore.guards import HostGuard, split_host
from ptgstore.settings import Settings

from support.browser import chromium
from support.servers import live_server, make_settings

ATTACKER = {"Host": "attacker.example", "Origin": "http://attacker.example"}


def handshake_status(server, path: str, headers: dict) -> int:
    """The HTTP status a raw WebSocket handshake gets (a raw socket: the Host is ours to choose)."""
    lines = [f"GET {path} HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
             *(f"{name}: {value}" for name, value in headers.items())]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])


# -- the Host allow-list (DNS rebinding) -----------------------------------------------------------

def test_a_rebound_name_gets_nothing_from_a_dev_server(server, rdb):
    http = server.http()
    assert http.post("/data/cam", files=[("entries", ("cam", b"frame"))]).status_code == 200
    # a page of attacker.example whose name now resolves to 127.0.0.1: same-origin in the browser's eyes
    login = httpx.post(server.url + "/token", data={"username": "x", "password": "x"}, headers=ATTACKER)
    assert login.status_code == 400 and "attacker.example" in login.json()["detail"]
    assert "set-cookie" not in login.headers
    token = server.token()
    with_token = {**ATTACKER, "Authorization": f"Bearer {token}"}
    assert httpx.get(server.url + "/streams", headers=with_token).status_code == 400
    assert httpx.delete(server.url + "/streams/cam", headers=with_token).status_code == 400
    assert httpx.get(server.url + "/ping", headers=ATTACKER).status_code == 400
    assert handshake_status(server, f"/data/cam/pull?token={token}", ATTACKER) == 400
    assert handshake_status(server, f"/data/cam/push?token={token}", ATTACKER) == 400
    assert rdb.xlen("cam") == 1  # nothing deleted
    # the same requests under the server's own names are served
    assert handshake_status(server, f"/data/cam/pull?token={token}", {"Host": f"localhost:{server.port}"}) == 101


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "127.0.0.1", "127.0.0.1:7890", "[::1]", "[::1]:80",
                                  "dev.localhost:8080", "127.1.2.3"])
def test_loopback_names_are_served(server, host):
    reply = httpx.get(server.url + "/streams", headers={"Host": host, "Authorization": f"Bearer {server.token()}"})
    assert reply.status_code == 200


@pytest.mark.parametrize("host", ["attacker.example", "localhost.attacker.example", "127.0.0.1.nip.io", "[::1",
                                  "localhost:port", "10.1.2.3", "", "local host", "0.0.0.0", "*.localhost.x"])
def test_other_hosts_are_refused(server, host):
    reply = httpx.get(server.url + "/streams", headers={"Host": host, "Authorization": f"Bearer {server.token()}"})
    assert reply.status_code == 400


def test_configured_hosts_are_served(tmp_path, rdb, redis_server):
    settings = make_settings(tmp_path, redis_server.url,
                             allowed_hosts=("store.example", "*.lab.example", "pinned.example:8443"))
    with live_server(settings) as live:
        def status(host):
            return httpx.get(live.url + "/ping", headers={"Host": host}).status_code
        assert status("store.example") == 200 and status("store.example:443") == 200
        assert status("cam.lab.example") == 200 and status("a.b.lab.example:80") == 200
        assert status("pinned.example:8443") == 200
        assert status("pinned.example:8080") == 400 and status("pinned.example") == 400
        assert status("lab.example") == 400 and status("evil-lab.example") == 400
        assert status("*.lab.example") == 400  # a pattern is not a name
        assert status("localhost") == 200  # loopback stays served


def test_any_host_when_configured(tmp_path, rdb, redis_server):
    with live_server(make_settings(tmp_path, redis_server.url, allowed_hosts=("*",))) as live:
        assert httpx.get(live.url + "/ping", headers={"Host": "anything.example"}).status_code == 200


def test_the_address_a_request_arrived_on_and_the_bind_address_are_served():
    # (a unit test: the test machine serves on loopback only)
    def scope(host, server=("192.0.2.7", 7890)):
        return {"type": "http", "headers": [(b"host", host.encode())], "server": server, "scheme": "http"}
    guard = HostGuard(None, Settings(host="0.0.0.0"))
    assert guard.allows(scope("192.0.2.7:7890")) and guard.allows(scope("192.0.2.7"))
    assert not guard.allows(scope("192.0.2.8")) and not guard.allows(scope("store.example"))
    assert guard.allows(scope("[::ffff:192.0.2.7]"))
    assert guard.allows({"type": "http", "headers": [], "server": None})  # no Host: not a browser
    here = socket.gethostname().lower().split(".")[0]
    assert guard.allows(scope(here)) and guard.allows(scope(here + ".local:7890"))  # the machine's own names
    named = HostGuard(None, Settings(host="store.lan"))
    assert named.allows(scope("store.lan:7890")) and not named.allows(scope("other.lan"))
    assert split_host("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert split_host("a.example:99999x") is None


# -- headers on every HTML answer ------------------------------------------------------------------

def test_every_html_answer_carries_the_page_policy(server):
    for path in ("/", "/static/index.html", "/docs"):
        reply = httpx.get(server.url + path)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html"), path
        assert "frame-ancestors 'none'" in reply.headers["content-security-policy"], path
        assert "script-src 'self'" in reply.headers["content-security-policy"], path
        assert "'unsafe-inline'" not in reply.headers["content-security-policy"].split("script-src")[1].split(";")[0]
        assert reply.headers["x-frame-options"] == "DENY", path
        assert reply.headers["x-content-type-options"] == "nosniff", path
    for path in ("/static/dashboard.js", "/ping", "/openapi.json"):
        assert httpx.get(server.url + path).headers["x-content-type-options"] == "nosniff"


# -- logging in ------------------------------------------------------------------------------------

def test_a_login_form_posted_from_another_site_is_refused(server):
    for headers in ({"Origin": "http://attacker.example"}, {"Referer": "http://attacker.example/page"},
                    {"Origin": "null"}):
        reply = httpx.post(server.url + "/token", data={"username": "mallory", "password": "mallory"},
                           headers=headers)
        assert reply.status_code == 403 and "set-cookie" not in reply.headers, headers
    own = {"Origin": server.url}
    assert httpx.post(server.url + "/token", data={"username": "a", "password": "a"}, headers=own).status_code == 200
    # scripts send no Origin: they go on working
    assert httpx.post(server.url + "/token", data={"username": "a", "password": "a"}).status_code == 200


def test_the_cookie_is_secure_when_the_request_came_over_https(server):
    form = {"username": "a", "password": "a"}
    plain = httpx.post(server.url + "/token", data=form)
    assert "secure" not in plain.headers["set-cookie"].lower()
    # a TLS proxy on this machine (trusted by uvicorn's default FORWARDED_ALLOW_IPS) says https
    proxied = httpx.post(server.url + "/token", data=form, headers={"X-Forwarded-Proto": "https"})
    assert "; secure" in proxied.headers["set-cookie"].lower()


@pytest.fixture
def users_server(tmp_path, rdb, redis_server):
    settings = make_settings(tmp_path, redis_server.url, auth="users", login_rate=3)
    subprocess.run([sys.executable, "-m", "ptgstore", "user", "add", "alice", "--password-stdin",
                    "--data-dir", settings.data_dir], input="s3cret pass\n", text=True, check=True, timeout=60)
    with live_server(settings) as live:
        yield live


@pytest.mark.slow
def test_password_checks_are_rate_limited_per_client(users_server):
    def attempt(password, client="198.51.100.1"):
        # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default: each value is another client
        return httpx.post(users_server.url + "/token", data={"username": "alice", "password": password},
                          headers={"X-Forwarded-For": client})
    assert [attempt("wrong").status_code for _ in range(3)] == [401, 401, 401]
    limited = attempt("s3cret pass")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "too many" in limited.json()["detail"]
    assert attempt("s3cret pass", client="198.51.100.2").status_code == 200  # another client is not held back



@pytest.mark.slow
def test_claimed_addresses_do_not_lift_the_overall_login_limit(users_server):
    # a local client may claim any X-Forwarded-For (uvicorn trusts it from 127.0.0.1): all clients
    # together get ten times one client's rate (3 a minute here)
    # (attempts without a password: counted like any, answered without an scrypt check, so quickly
    # that the bucket refills by far less than one attempt meanwhile)
    statuses = []
    with httpx.Client(base_url=users_server.url) as client:
        for i in range(100):
            statuses.append(client.post("/token", data={"username": "alice"},
                                        headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code)
            if statuses[-1] == 429:
                break
    assert statuses[-1] == 429 and len(statuses) > 30 and 429 not in statuses[:30]  # (refused as malformed)


@pytest.mark.browser
def test_the_docs_page_works_under_its_policy(server):
    # Swagger UI renders with its one inline script allowed by hash: no policy violation in the console
    executable = chromium()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"],
                                             timeout=60_000)
        try:
            page = browser.new_page()
            errors = []
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url + "/docs")
            sync_api.expect(page.locator(".opblock").first).to_be_visible(timeout=30_000)
            # (the browser's own /favicon.ico request gets a 401: not the page's doing)
            assert [e for e in errors if "favicon" not in e and "401" not in e] == []
        finally:
            browser.close()
