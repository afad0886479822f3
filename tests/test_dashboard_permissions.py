"""The dashboard in a real browser for users with different permissions: it lists only what the user
may read, hides the controls they lack, and shows the server's reason when something is refused."""
from __future__ import annotations

import pytest

from ptgstore.permissions import Rights
from support.browser import WAIT, Watched, browser_test, jpeg
from support.permissionlab import users_file
from support.servers import live_server, make_settings

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = browser_test
expect = sync_api.expect
expect.set_options(timeout=WAIT)
STREAMS = ["hl1:main", "hl1:depth", "hl2:main", "lab:imu"]
# what the browser logs by itself for an answer the page expected (the page shows the reason)
EXPECTED_CONSOLE = "Failed to load resource: the server responded with a status of 403"


@pytest.fixture
def lab(tmp_path, rdb, redis_server):
    settings = make_settings(tmp_path, redis_server.url, auth="users")
    users_file(settings.users_path, headset=Rights((), ("hl1:*",), False), viewer=Rights(("*:main",), (), False),
               admin=None)
    with live_server(settings) as live:
        with live.http("admin") as admin:
            for sid in STREAMS:
                assert admin.post(f"/data/{sid}", files=[("f", ("f", jpeg((200, 30, 30))))]).status_code == 200
        yield live


@pytest.fixture
def sign_in(browser, lab):
    contexts = []

    def signed_in(user: str) -> Watched:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(context)
        watched = Watched(context.new_page(), lab.url)
        page = watched.page
        page.goto(lab.url + "/")
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", user)
        page.click("#login-form button[type=submit]")
        expect(page.locator("#whoami")).to_have_text(f"signed in as {user}")
        return watched

    try:
        yield signed_in
    finally:
        for context in contexts:
            context.close()


def rows(page) -> list[str]:
    return page.locator("#streams tbody tr").evaluate_all("rows => rows.map((r) => r.dataset.sid)")


def test_the_viewer_sees_main_streams_and_no_admin_controls(sign_in, lab):
    watched = sign_in("viewer")
    page = watched.page
    expect(page.locator("#streams tbody tr")).to_have_count(2)
    assert rows(page) == ["hl1:main", "hl2:main"]
    expect(page.locator("#nav-server")).to_be_hidden()
    page.goto(lab.url + "/#/stream/hl1:main")
    expect(page.locator("#preview img")).to_be_visible()
    for control in ("#max-len-form", "#meta-form", "#delete"):
        expect(page.locator(control)).to_be_hidden()
    # a stream it may not read: the reason, not a broken preview
    page.goto(lab.url + "/#/stream/lab:imu")
    expect(page.locator("#preview-error")).to_have_text("forbidden: no read permission on stream 'lab:imu'")
    page.goto(lab.url + "/#/recordings")
    expect(page.locator("#recording-current")).to_have_text("not recording")
    expect(page.locator("#recording-form")).to_be_hidden()  # it records every stream: not the viewer's
    page.goto(lab.url + "/#/server")  # not the viewer's either: the overview instead
    expect(page.locator("#overview")).to_be_visible()
    assert watched.errors == [] and watched.foreign_requests() == []


def test_the_browser_client_says_what_is_forbidden(sign_in, lab):
    watched = sign_in("viewer")
    result = watched.page.evaluate("""async () => {
        const { PtgStore } = await import('/static/ptgstore.js');
        const store = new PtgStore();
        const out = {};
        try { await store.status(); } catch (error) { out.status = [error.forbidden, error.status, error.message]; }
        const pusher = store.pusher('hl1:main');
        try { await pusher.push('x'); } catch (error) { out.push = [error.forbidden, error.code, error.message]; }
        const pull = store.pull('lab:imu', { lastEntryId: '0' });
        try { for await (const entry of pull) break; } catch (error) { out.pull = [error.forbidden, error.code, error.message]; }
        const narrow = new PtgStore({ token: await store.deriveToken({ read: ['hl2:main'], ttl: 60 }) });
        out.narrow = await narrow.streams();
        try { await narrow.deriveToken({ read: ['*:main'] }); } catch (error) { out.wider = [error.forbidden, error.message]; }
        out.permissions = await store.permissions();
        return out;
    }""")
    assert result["status"] == [True, 403, "forbidden: admin permission needed to see the server's status"]
    assert result["push"] == [True, 1008, "forbidden: no write permission on stream 'hl1:main'"]
    assert result["pull"] == [True, 1008, "forbidden: no read permission on stream 'lab:imu'"]
    assert result["narrow"] == ["hl2:main"]
    assert result["wider"][0] is True and "'*:main'" in result["wider"][1]
    assert result["permissions"]["read"] == ["*:main"] and result["permissions"]["admin"] is False
    assert [e for e in watched.errors if EXPECTED_CONSOLE not in e] == []


def test_the_headset_sees_nothing_and_the_admin_everything(sign_in, lab):
    headset = sign_in("headset").page
    expect(headset.locator("#no-streams")).to_be_visible()
    assert rows(headset) == []
    expect(headset.locator("#nav-server")).to_be_hidden()
    admin = sign_in("admin").page
    expect(admin.locator("#streams tbody tr")).to_have_count(len(STREAMS))
    expect(admin.locator("#nav-server")).to_be_visible()
    admin.goto(lab.url + "/#/stream/lab:imu")
    for control in ("#max-len-form", "#meta-form", "#delete"):
        expect(admin.locator(control)).to_be_visible()
    admin.goto(lab.url + "/#/recordings")
    expect(admin.locator("#recording-form")).to_be_visible()
    admin.goto(lab.url + "/#/server")
    expect(admin.locator("#server-store")).to_contain_text("reachable")
