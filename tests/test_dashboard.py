"""The dashboard in a real browser: the system's chromium driven by Playwright (no downloaded browser).

Skipped when chromium is not on PATH (`.ci/run` installs it). Every wait has a timeout.
"""
from __future__ import annotations

import contextlib
import http.server
import io
import re
import threading
import time
from urllib.parse import quote

import httpx
import pytest
from PIL import Image, ImageStat

from ptgstore.recordings.mcapfiles import read_messages
from ptgstore.testing import free_port, wait_until
from support.browser import WAIT, Watched, browser_test, jpeg
from support.ws import push, ws_connect

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = browser_test
expect = sync_api.expect
expect.set_options(timeout=WAIT)


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture
def watched(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    watch = Watched(page, server.url)
    try:
        yield watch
        assert watch.errors == [], f"errors in the browser console: {watch.errors}"
        assert watch.foreign_requests() == [], "requests left the server's origin"
    finally:
        context.close()


@pytest.fixture
def signed_in(watched, server):
    """A page signed in through the dashboard's own login form."""
    page = watched.page
    page.goto(server.url + "/")
    expect(page.locator("#login-form")).to_be_visible()
    page.fill("input[name=username]", "test")
    page.fill("input[name=password]", "test")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#overview")).to_be_visible()
    expect(page.locator("#whoami")).to_have_text("signed in as test")
    return watched


# -- helpers ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def pushing(server, sid, hz=20, seconds=60):
    """Push small entries at `hz` in a thread, for at most `seconds` (or until the block ends)."""
    stop = threading.Event()

    def run():
        with ws_connect(server, f"/data/{sid}/push", ack="true") as ws:
            deadline = time.monotonic() + seconds
            i = 0
            while not stop.is_set() and time.monotonic() < deadline:
                ws.send(b"entry %d" % i)
                ws.recv(timeout=10)
                i += 1
                stop.wait(1 / hz)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive()


def colour_of(png: bytes) -> tuple[int, int, int]:
    """The mean colour of the middle half of a screenshot."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    w, h = image.size
    middle = image.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    return tuple(round(v) for v in ImageStat.Stat(middle).mean)


def assert_colour(png: bytes, expected, tolerance=40):
    actual = colour_of(png)
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected)), f"colour {actual}, expected {expected}"


def wait_for_colour(locator, expected, timeout_s=15.0, tolerance=40):
    """Screenshots of `locator` until its middle shows `expected` (fails after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        png = locator.screenshot(timeout=WAIT)
        actual = colour_of(png)
        if all(abs(a - e) <= tolerance for a, e in zip(actual, expected)):
            return png
        assert time.monotonic() < deadline, f"colour {actual}, expected {expected}"
        time.sleep(0.2)


# -- tests ------------------------------------------------------------------------------------------

def test_page_is_served_with_a_strict_content_security_policy(server):
    reply = httpx.get(server.url + "/", timeout=10)
    assert reply.status_code == 200
    policy = reply.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "img-src 'self' blob: data:" in policy
    assert f"connect-src 'self' ws://127.0.0.1:{server.port} wss://127.0.0.1:{server.port}" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert reply.headers["x-frame-options"] == "DENY"
    page = reply.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "inline script in the page"
    assert not re.search(r"\son[a-z]+=", page), "inline event handler in the page"
    assert "//" not in re.sub(r"https?://www\.w3\.org[^\"]*", "", " ".join(re.findall(r'(?:src|href)="([^"]*)"', page)))
    for asset in ("/static/dashboard.js", "/static/ptgstore.js", "/static/dashboard.css", "/static/favicon.svg"):
        assert httpx.get(server.url + asset, timeout=10).status_code == 200, asset
    # the data behind the page still needs a token
    assert httpx.get(server.url + "/status/streams", timeout=10).status_code == 401


def test_sign_in_and_see_streams_with_a_live_rate(signed_in, server):
    page = signed_in.page
    with pushing(server, "imu", hz=20):
        row = page.locator("#streams tbody tr[data-sid=imu]")
        expect(row).to_be_visible()
        rate = row.locator("td").nth(3)
        expect(rate).to_have_text(re.compile(r"^(?:[1-9]\d*|\d+\.\d*[1-9]\d*)"), timeout=WAIT)
        assert 1 <= float(rate.inner_text().replace(",", "")) <= 60  # pushed at up to 20 per second
        # the overview keeps up as pushes continue
        length = row.locator("td").nth(2)
        before = length.inner_text()
        expect(length).not_to_have_text(before, timeout=WAIT)
        expect(row.locator("td").nth(4)).to_have_text(re.compile(r"^≈ \d"))


def test_filter_by_name(signed_in, server):
    page = signed_in.page
    for sid in ("cam/left", "cam/right", "imu"):
        push(server, sid, b"x")
    expect(page.locator("#streams tbody tr")).to_have_count(3)
    page.fill("#filter", "cam")
    expect(page.locator("#streams tbody tr:visible")).to_have_count(2)
    expect(page.locator("#stream-count")).to_have_text("2 of 3 streams")


def test_overview_of_500_streams_updates_and_filters(signed_in, server, rdb):
    page = signed_in.page
    pipe = rdb.pipeline(transaction=False)
    for i in range(500):
        pipe.xadd(f"sensor/{i:03d}", {"d": b"x" * 10})
    pipe.execute()
    rows = page.locator("#streams tbody tr")
    expect(rows).to_have_count(500)
    expect(page.locator("#stream-count")).to_have_text("500 streams")
    page.fill("#filter", "sensor/12")
    expect(page.locator("#streams tbody tr:visible")).to_have_count(10)  # 120-129
    with pushing(server, "sensor/123", hz=20):
        rate = page.locator("#streams tbody tr[data-sid='sensor/123'] td").nth(3)
        expect(rate).to_have_text(re.compile(r"^[1-9]"))
    page.fill("#filter", "")
    expect(page.locator("#streams tbody tr:visible")).to_have_count(500)


def test_camera_frames_show_as_images_in_the_preview_and_in_an_mjpeg_img(signed_in, server):
    page = signed_in.page
    push(server, "main", jpeg((255, 0, 0)))
    page.goto(server.url + "/#/stream/main")
    image = page.locator("#preview img")
    expect(image).to_be_visible()
    wait_for_colour(image, (255, 0, 0))
    push(server, "main", jpeg((0, 0, 255)))  # live: the newest frame replaces it
    wait_for_colour(image, (0, 0, 255))
    expect(page.locator("#entry-caption")).to_contain_text("image/jpeg")
    expect(page.locator("#entry-caption")).to_contain_text("latency")
    # an <img> pointed at /mjpeg/{sid} in a page of the same site plays the camera (cookie auth)
    page.evaluate("""() => {
        const img = document.createElement('img');
        img.id = 'mjpeg'; img.width = 160; img.height = 120; img.src = '/mjpeg/main?last_entry_id=*';
        document.body.prepend(img);
    }""")
    mjpeg = page.locator("#mjpeg")
    wait_for_colour(mjpeg, (0, 0, 255))
    push(server, "main", jpeg((0, 255, 0)))
    wait_for_colour(mjpeg, (0, 255, 0))
    page.evaluate("() => document.getElementById('mjpeg').remove()")


def test_entries_render_by_content_and_step_back(signed_in, server):
    page = signed_in.page
    push(server, "mixed", b"first words", b'{"b": [1, 2], "a": "<b>bold?</b>"}', bytes(range(200)))
    page.goto(server.url + "/#/stream/mixed")
    preview = page.locator("#preview pre")
    expect(preview).to_have_text(re.compile(r"^200 bytes\n00 01 02 03"))
    page.click("#older")
    expect(preview).to_have_text('{\n  "b": [\n    1,\n    2\n  ],\n  "a": "<b>bold?</b>"\n}')
    assert page.locator("#preview b").count() == 0  # shown as text, never as HTML
    page.click("#older")
    expect(preview).to_have_text("first words")
    expect(page.locator("#entry-caption")).to_contain_text("1 of 3")
    page.click("#newer")
    expect(preview).to_contain_text('"a": "<b>bold?</b>"')
    page.click("#live")
    expect(preview).to_have_text(re.compile(r"^200 bytes"))


def test_stream_ids_and_metadata_are_text_never_html(signed_in, server):
    page = signed_in.page
    sid = "<img src=x onerror=alert(1)>"
    with server.http() as http:
        path = quote(sid, safe="")
        http.post(f"/data/{path}", files={"e": ("e", b"x")}).raise_for_status()
        http.put(f"/streams/{path}", json={"note": "<script>alert(2)</script>"}).raise_for_status()
    row = page.locator("#streams tbody tr").first
    expect(row.locator("td").nth(1)).to_have_text(sid)
    expect(row.locator("td").nth(7)).to_have_text('{"note":"<script>alert(2)</script>"}')
    assert page.locator("#streams img, #streams script").count() == 0


def test_admin_sets_max_len_and_metadata(signed_in, server):
    page = signed_in.page
    push(server, "depth", b"x")
    page.goto(server.url + "/#/stream/depth")
    expect(page.locator("#max-len")).to_have_value("1000")
    page.fill("#max-len", "7")
    page.click("#max-len-form button")
    expect(page.locator("#admin-message")).to_have_text("max_len set to 7")
    page.fill("#meta", '{"max_len": 7, "sensor": "depth camera"}')
    page.click("#meta-form button")
    expect(page.locator("#admin-message")).to_have_text("metadata saved")
    with server.http() as http:
        assert http.get("/streams/depth").json()["meta"] == {"max_len": 7, "sensor": "depth camera"}
    page.fill("#meta", "{not json")
    page.click("#meta-form button")
    expect(page.locator("#admin-message")).to_contain_text("not JSON")


def test_deleting_a_stream_from_the_page_removes_it(signed_in, server):
    page = signed_in.page
    push(server, "doomed", b"1", b"2")
    push(server, "kept", b"1")
    expect(page.locator("#streams tbody tr[data-sid=doomed]")).to_be_visible()
    page.goto(server.url + "/#/stream/doomed")
    dialogs = []
    page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.click("#delete")
    expect(page.locator("#stream")).to_be_visible()  # dismissed: nothing happens
    assert dialogs and "doomed" in dialogs[0]
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete")
    expect(page.locator("#overview")).to_be_visible()
    expect(page.locator("#streams tbody tr[data-sid=doomed]")).to_have_count(0)
    expect(page.locator("#streams tbody tr[data-sid=kept]")).to_have_count(1)
    with server.http() as http:
        assert "doomed" not in http.get("/streams").json()
        assert http.get("/data/doomed").headers["entry-offset"] == "[]"


def test_camera_grid_side_by_side(signed_in, server):
    page = signed_in.page
    push(server, "left", jpeg((255, 0, 0)))
    push(server, "right", jpeg((0, 255, 0)))
    expect(page.locator("#streams tbody tr")).to_have_count(2)
    page.check("#streams tbody tr[data-sid=left] input[type=checkbox]")
    page.check("#streams tbody tr[data-sid=right] input[type=checkbox]")
    page.click("#show-grid")
    left = page.locator(".tile[data-sid=left] img")
    right = page.locator(".tile[data-sid=right] img")
    wait_for_colour(left, (255, 0, 0))
    wait_for_colour(right, (0, 255, 0))
    a, b = left.bounding_box(), right.bounding_box()
    assert abs(a["y"] - b["y"]) < 5 and a["x"] < b["x"], "tiles are side by side"


def test_cameras_view_shows_every_camera_stream(signed_in, server):
    page = signed_in.page
    push(server, "cam/a", jpeg((255, 0, 0)))
    push(server, "cam/b", jpeg((0, 0, 255)))
    push(server, "imu", b'{"x": 1}')
    expect(page.locator("#streams tbody tr")).to_have_count(3)
    page.click("#nav a[data-view=grid]")
    expect(page.locator(".tile")).to_have_count(2)
    wait_for_colour(page.locator(".tile[data-sid='cam/a'] img"), (255, 0, 0))
    wait_for_colour(page.locator(".tile[data-sid='cam/b'] img"), (0, 0, 255))


def test_server_panel_shows_store_sockets_and_rates(signed_in, server):
    page = signed_in.page
    page.click("#nav a[data-view=server]")
    store = page.locator("#server-store")
    expect(store).to_contain_text("reachable")
    expect(store).to_contain_text(server.settings.redis_url.split("//")[1])
    with pushing(server, "imu", hz=20):
        traffic = page.locator("#server-traffic")
        expect(traffic.locator("dt:text-is('push sockets') + dd")).to_have_text("1")
        expect(traffic.locator("dt:text-is('entries in/s') + dd")).to_have_text(re.compile(r"^[1-9]"))


def test_login_refused_with_wrong_password(watched, server):
    page = watched.page
    page.goto(server.url + "/")
    page.fill("input[name=username]", "test")
    page.fill("input[name=password]", "wrong")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_have_text("wrong user name or password")
    expect(page.locator("#overview")).to_be_hidden()
    # the browser's own report of the refused request is expected here
    watched.errors = [e for e in watched.errors if "401" not in e]


def test_browser_client_pushes_and_pulls(signed_in, server):
    page = signed_in.page
    result = page.evaluate("""async () => {
        const { PtgStore } = await import('/static/ptgstore.js');
        const store = new PtgStore();
        const pull = store.pull('roundtrip', { lastEntryId: '$', count: 10 });
        const pusher = store.pusher('roundtrip');
        const ids = [];
        for (const entry of ['one', new Uint8Array([0, 255, 7]), 'three']) ids.push(await pusher.push(entry));
        const got = [];
        for await (const entry of pull) {
            got.push([entry.sid, entry.id, Array.from(entry.data)]);
            if (got.length === 3) break;
        }
        pusher.close();
        const latest = await store.latest('roundtrip', 2);
        return { ids, got, latest: latest.map((e) => Array.from(e.data)), streams: await store.streams() };
    }""")
    assert [g[1] for g in result["got"]] == result["ids"]
    assert [bytes(g[2]) for g in result["got"]] == [b"one", b"\x00\xff\x07", b"three"]
    assert [bytes(e) for e in result["latest"]] == [b"\x00\xff\x07", b"three"]
    assert "roundtrip" in result["streams"]


class _ForeignPage(http.server.BaseHTTPRequestHandler):
    """A page of another origin (same host, other port) that tries to change data with the user's cookie."""

    target = ""

    def do_GET(self):  # (the standard library's name)
        body = f"""<!doctype html><html><body><form id="f" method="POST" enctype="multipart/form-data"
            action="{self.target}/data/victim"><input type="hidden" name="x" value="y"></form>
            <p id="done">ready</p></body></html>""".encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def foreign_site(target: str):
    handler = type("Handler", (_ForeignPage,), {"target": target})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_a_page_on_another_origin_cannot_change_data_with_the_cookie(signed_in, server):
    page = signed_in.page
    push(server, "victim", b"precious")
    with foreign_site(server.url) as foreign:
        other = page.context.new_page()
        other.goto(foreign + "/")
        other.evaluate("""async (target) => {
            const attempts = [
                fetch(target + '/streams/victim', { method: 'DELETE', credentials: 'include' }),
                fetch(target + '/streams/victim', { method: 'PUT', credentials: 'include', mode: 'no-cors',
                    headers: { 'Content-Type': 'text/plain' }, body: '{"max_len": 1}' }),
                fetch(target + '/data/victim', { method: 'POST', credentials: 'include', mode: 'no-cors',
                    body: (() => { const f = new FormData(); f.append('e', new Blob(['forged']), 'e'); return f; })() }),
            ];
            await Promise.allSettled(attempts);
        }""", server.url)
        with other.expect_navigation(timeout=WAIT):
            other.evaluate("() => document.getElementById('f').submit()")
        other.close()
    with server.http() as http:
        info = http.get("/streams/victim").json()
        assert info["length"] == 1 and info["meta"] == {}
        entries = http.get("/data/victim", params={"last_entry_id": "0", "count": 10})
        assert entries.content == b"precious"


def test_recordings_panel_starts_stops_lists_and_downloads(signed_in, server):
    page = signed_in.page
    page.click("#nav a[data-view=recordings]")
    expect(page.locator("#recording-current")).to_have_text("not recording")
    page.fill("#recording-name", "bench-session")
    page.click("#recording-start")
    expect(page.locator("#recording-current")).to_have_text("recording now: bench-session")
    frames = [jpeg((255, 0, 0)), jpeg((0, 0, 255))]
    ids = push(server, "main", *frames)
    page.click("#recording-stop")
    expect(page.locator("#recording-current")).to_have_text("not recording")
    item = page.locator("#recording-list li[data-name=bench-session]")
    link = item.locator("a.download", has_text=re.compile(r"\.mcap$")).first
    expect(link).to_be_visible()
    expect(item.locator(".muted")).to_contain_text(re.compile(r"^\d+\.\d s · "))  # `0.1 s`, not `0:00:00.1`
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename.startswith("bench-session-part-")  # named after the recording
    messages = list(read_messages([download.value.path()]))
    assert [(m.sid, m.entry_id, m.data) for m in messages] == [("main", i, f) for i, f in zip(ids, frames)]


def test_recordings_panel_and_server_panel_say_when_this_server_refuses_recordings(signed_in, server, rdb):
    page = signed_in.page
    page.click("#nav a[data-view=server]")
    expect(page.locator("#server-process dt:text-is('recordings') + dd")).to_contain_text(
        "on; processes able to record: 1")
    # the deployment's directory becomes another one (as when another process set it up elsewhere)
    rdb.hset("ptgstore:recordings:directory", mapping={"id": "another-deployment", "path": "/mnt/elsewhere"})
    wait_until(lambda: server.app.state.recorder.problem is not None, timeout=20, what="the directory check")
    expect(page.locator("#server-process dt:text-is('recordings') + dd")).to_contain_text(
        "refused: this process's PTGSTORE_RECORDINGS_DIR")
    page.click("#nav a[data-view=recordings]")
    problem = page.locator("#recording-problem")
    expect(problem).to_be_visible()
    expect(problem).to_contain_text("Recordings are refused on this server")
    expect(problem).to_contain_text("not the recordings directory of this deployment")
