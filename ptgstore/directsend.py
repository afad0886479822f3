"""The socket send shortcut: data messages of an accepted WebSocket skip the middleware stack.

Every middleware wraps `send`; a `websocket.send` message needs none of them (handlers count
their entries themselves), and on a wide fan-out the wrappers' cost per message adds up (docs/performance.md has
the figures).
`DirectSend` goes outermost in the app's middleware list and hands the server's send to the
socket routes that ask for it with `direct_send`.
"""
from __future__ import annotations

SCOPE_KEY = "ptgstore.direct_send"


class DirectSend:
    """Keep the server's own send in the scope of every WebSocket, for `direct_send`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            scope = dict(scope)
            scope[SCOPE_KEY] = send
        await self.app(scope, receive, send)


def direct_send(scope, send):
    """The send for `websocket.send` messages of an accepted socket: the server's own when
    `DirectSend` is in front, else `send` (an app built without it)."""
    return scope.get(SCOPE_KEY, send)
