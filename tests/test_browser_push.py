"""The browser client's pusher (static/ptgstore.js) in the system's chromium, through a proxy that cuts
connections at random and loses acks: every push resolves once with its id, each entry stored once."""
from __future__ import annotations

from ptgstore.testproxy import CuttingProxy
from support.browser import WAIT, browser_test

pytestmark = browser_test

PUSH_AT_30_HZ = """async ({ token, count }) => {
    const { PtgStore } = await import('/static/ptgstore.js');
    const store = new PtgStore({ token });
    const pusher = store.pusher('browser');
    const pushes = [];
    for (let i = 0; i < count; i++) {
        pushes.push(pusher.push(`entry ${i}`));  // not awaited: several in flight, as a camera loop would
        await new Promise((resolve) => setTimeout(resolve, 1000 / 30));
    }
    const ids = await Promise.all(pushes);
    pusher.close();
    return { ids, summary: pusher.summary };
}"""


def test_browser_pusher_carries_on_through_cuts_and_lost_acks(browser, server, rdb):
    count = 90
    with CuttingProxy([server.port], seed=5) as proxy:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.set_default_timeout(WAIT)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(proxy.url + "/")  # the page's origin is the proxy's: its policy allows sockets there
            proxy.drop_replies = 0.1
            with proxy.chaos((0.15, 0.4)):
                result = page.evaluate(PUSH_AT_30_HZ, {"token": server.token(), "count": count})
        finally:
            context.close()
    assert errors == []
    stored = [(entry_id.decode(), fields[b"d"]) for entry_id, fields in rdb.xrange("browser")]
    assert stored == list(zip(result["ids"], [b"entry %d" % i for i in range(count)]))
    assert result["summary"]["reconnects"] >= 1 and result["summary"]["resends"] >= 1
    assert proxy.dropped >= 1
