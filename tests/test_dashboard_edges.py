"""First-run edges of the dashboard, in Debian's chromium: MJPEG offered for image streams only, the
page behind a proxy at a sub-path (PTGSTORE_ROOT_PATH), an entry's age told apart from a latency, and
the server panel under `ptgstore serve --workers 3`."""
from __future__ import annotations

import re
from types import SimpleNamespace

import httpx
import pytest

from ptgstore.routes.dashboard import STATIC_DIR
from support.browser import WAIT, Watched, browser_test, jpeg
from support.servers import LiveServer, ServeProcess, make_settings
from support.ws import push

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = browser_test
expect = sync_api.expect
expect.set_options(timeout=WAIT)

PREFIX = "/lab/store"


class StripPrefix:
    """A reverse proxy serving the app under PREFIX, as nginx's `location /lab/store/ { proxy_pass
    http://ptgstore/; }`: it strips the prefix from HTTP and WebSocket paths and answers 404 (closes)
    for anything outside it. Lifespan events pass through."""

    def __init__(self, app, prefix: str):
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            path = scope["path"]
            if not (path == self.prefix or path.startswith(self.prefix + "/")):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send({"type": "http.response.start", "status": 404, "headers": []})
                await send({"type": "http.response.body", "body": b"outside the proxied prefix"})
                return
            raw = scope.get("raw_path") or path.encode()
            scope = dict(scope, path=path[len(self.prefix):] or "/", raw_path=raw[len(self.prefix):] or b"/")
        await self.app(scope, receive, send)


def sign_in(page, url: str) -> None:
    page.goto(url)
    expect(page.locator("#login-form")).to_be_visible()
    page.fill("input[name=username]", "test")
    page.fill("input[name=password]", "test")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#overview")).to_be_visible()


@pytest.fixture
def dashboard(browser, server):
    """A page signed in through the login form; no console errors, no request off the origin."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        watch = Watched(context.new_page(), server.url)
        sign_in(watch.page, server.url + "/")
        yield watch
        assert watch.errors == [], f"errors in the browser console: {watch.errors}"
        assert watch.foreign_requests() == [], "requests left the server's origin"
    finally:
        context.close()


def test_the_dashboards_modules_are_served_small_and_revalidated(server):
    """One module per view, each imported by another (none left over) and under 500 lines; served
    with `no-cache` (revalidated by ETag), so that no module is mixed with a cached older one."""
    modules = {path.name: path.read_text() for path in STATIC_DIR.glob("*.js")}
    assert {"dashboard.js", "ptgstore.js", "dashboard-state.js", "dashboard-format.js"} <= set(modules)
    imported = {name for text in modules.values() for name in re.findall(r'from "\./([\w.-]+\.js)"', text)}
    assert imported == set(modules) - {"dashboard.js"}
    for name, text in modules.items():
        assert text.count("\n") < 500, name
        reply = httpx.get(f"{server.url}/static/{name}", timeout=10)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/javascript"), name
        assert reply.headers["cache-control"] == "no-cache" and reply.headers["etag"], name
        again = httpx.get(f"{server.url}/static/{name}", headers={"if-none-match": reply.headers["etag"]}, timeout=10)
        assert again.status_code == 304, name


def test_mjpeg_is_offered_for_image_streams_only(dashboard, server):
    page = dashboard.page
    push(server, "cam", jpeg((255, 0, 0)))
    push(server, "depth", bytes(range(256)) * 8)  # a raw 16-bit depth image: no JPEG or PNG
    push(server, "imu", b'{"ax": 0.1, "ay": 0.0, "az": 9.8}')
    link = page.locator("#mjpeg-link")
    page.goto(server.url + "/#/stream/cam")
    expect(link).to_be_visible()
    assert link.get_attribute("href") == server.url + "/mjpeg/cam?last_entry_id=*"
    for sid in ("depth", "imu"):
        page.goto(f"{server.url}/#/stream/{sid}")
        expect(page.locator("#stream-info")).to_contain_text("not an image")  # the summary has arrived
        expect(link).to_be_hidden()
    # a stream that turns into a camera gets the offer at the next poll
    push(server, "imu", jpeg((0, 0, 255)))
    expect(link).to_be_visible()


def test_entry_age_is_not_called_latency(dashboard, server):
    page = dashboard.page
    push(server, "idle", b"stored before the page looked")
    page.goto(server.url + "/#/stream/idle")
    caption = page.locator("#entry-caption")
    expect(caption).to_contain_text(re.compile(r"last entry \d+(\.\d)? (ms|s) ago"))
    assert "latency" not in caption.inner_text()
    expect(page.locator("#stream-stats")).to_contain_text(re.compile(r"last entry \d.* ago"))
    push(server, "idle", b"pushed while watched")  # arrives live: its delay is a latency
    expect(caption).to_contain_text(re.compile(r"latency \d+(\.\d)? (ms|s)$"))
    # the overview's column is the newest entry's age
    page.goto(server.url + "/#/")
    expect(page.locator("#streams thead")).to_contain_text("last entry")
    expect(page.locator("#streams tbody tr[data-sid=idle] td").nth(5)).to_have_text(re.compile(r" ago$"))
    # a grid tile likewise
    push(server, "cam", jpeg((0, 255, 0)))
    page.goto(server.url + "/#/grid?s=cam")
    expect(page.locator(".tile[data-sid=cam] .caption")).to_contain_text(re.compile(r"last entry .* ago"))


def test_dashboard_behind_a_proxy_at_a_sub_path(browser, tmp_path, rdb, redis_server):
    live = LiveServer(make_settings(tmp_path, redis_server.url, root_path=PREFIX))
    live.server.config.app = StripPrefix(live.app, PREFIX)
    live.start()
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        proxied = SimpleNamespace(ws_url=live.ws_url + PREFIX, token=live.token)
        push(proxied, "cam", jpeg((255, 0, 0)))
        assert httpx.get(live.url + "/", timeout=10).status_code == 404  # only the prefix is proxied
        watch = Watched(context.new_page(), live.url)
        page = watch.page
        sockets: list[str] = []
        page.on("websocket", lambda socket: sockets.append(socket.url))
        sign_in(page, live.url + PREFIX + "/")
        expect(page.locator("#streams tbody tr[data-sid=cam]")).to_be_visible()  # fetches under the prefix
        page.goto(live.url + PREFIX + "/#/stream/cam")
        expect(page.locator("#preview img")).to_be_visible()  # a WebSocket pull under the prefix
        push(proxied, "cam", jpeg((0, 0, 255)))
        expect(page.locator("#entry-caption")).to_contain_text("latency")
        link = page.locator("#mjpeg-link")
        expect(link).to_be_visible()
        assert link.get_attribute("href") == f"{live.url}{PREFIX}/mjpeg/cam?last_entry_id=*"
        with httpx.stream("GET", link.get_attribute("href"), headers={"Authorization": f"Bearer {live.token()}"},
                          timeout=10) as reply:  # (an endless answer: its headers only)
            assert reply.headers["content-type"].startswith("multipart/x-mixed-replace")
        assert page.locator("nav a", has_text="API").get_attribute("href") == PREFIX + "/docs"
        page.goto(live.url + PREFIX + "/#/recordings")
        expect(page.locator("#recording-current")).to_have_text("not recording")
        page.goto(live.url + PREFIX + "/#/server")
        expect(page.locator("#server-store")).to_contain_text("reachable")
        assert watch.errors == [], watch.errors
        outside = [url for url in watch.requests if not url.startswith((f"{live.url}{PREFIX}/", "blob:", "data:"))]
        assert outside == [], "requests outside the proxied prefix"
        assert sockets and all(url.startswith(f"{live.ws_url}{PREFIX}/data/cam/pull?") for url in sockets), sockets
    finally:
        context.close()
        live.stop()


def test_page_under_uvicorns_root_path_names_its_assets_under_it(tmp_path, rdb, redis_server):
    live = LiveServer(make_settings(tmp_path, redis_server.url))
    live.server.config.root_path = "/store"  # as `uvicorn --root-path /store` behind a proxy that strips it
    live.start()
    try:
        page = httpx.get(live.url + "/", timeout=10).text
        urls = re.findall(r'(?:src|href)="(/[^"]*)"', page)
        assert urls and all(url.startswith("/store/") for url in urls), urls
        assert '<meta name="ptgstore-root" content="/store">' in page
        for url in urls:
            if "/static/" in url:
                assert httpx.get(live.url + url[len("/store"):], timeout=10).status_code == 200, url
    finally:
        live.stop()


@pytest.mark.slow  # `ptgstore serve --workers 3` as processes
def test_server_panel_and_status_count_the_workers_of_serve(browser, tmp_path):
    with ServeProcess(tmp_path / "data", "--workers", "3") as server:
        server.wait_ready(timeout=60)
        headers = {"Authorization": f"Bearer {server.token()}"}
        answers = [httpx.get(server.url + "/status", headers=headers, timeout=10).json() for _ in range(6)]
        assert {answer.get("workers") for answer in answers} == {3}, answers
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        try:
            watch = Watched(context.new_page(), server.url)
            sign_in(watch.page, server.url + "/")
            watch.page.goto(server.url + "/#/server")
            expect(watch.page.locator("#server-process")).to_contain_text(re.compile(r"workers\s*3"), timeout=WAIT)
            assert watch.errors == [], watch.errors
        finally:
            context.close()


def test_a_hostile_user_name_is_text_in_the_page_and_fills_no_other_placeholder(server):
    """Under the dev policy a token holder picks any name: one made of markup and of the page's own
    placeholders lands in the page escaped, once, and the root path and features stay the server's."""
    name = '{{root}}"><script>alert(1)</script>{{features}}'
    with server.http() as http:
        token = http.post("/token", data={"username": name, "password": name}).json()["access_token"]
        page = http.get("/", headers={"Authorization": f"Bearer {token}"}).text
    assert "<script>alert(1)</script>" not in page
    assert ('<meta name="ptgstore-user" content="{{root}}&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;'
            '{{features}}">') in page
    assert '<meta name="ptgstore-root" content="">' in page
    assert '<script type="module" src="/static/dashboard.js"></script>' in page
