"""Python client for ptgstore: `AsyncClient` for workers, `Client` (the same calls, blocking) for scripts.

    with Client("http://127.0.0.1:7890", username="test", password="test") as client:
        ids = client.push("cam", [b"frame 1", b"frame 2"])
        for entry in client.pull("cam", last_entry_id="0", limit=2):
            print(entry.stream_id, entry.entry_id, len(entry.data))

Every failure is a `PtgError` carrying the server's reason: `AuthError` (and `Forbidden`, a token
without the permission), `NotFound`, `BadRequest`, `ServerError`, `Unreachable`, or `StreamClosed`
(a WebSocket closed with a code and reason; `StreamForbidden` when it names a missing permission).

The parts: `aio` (`AsyncClient`), `sync` (`Client` on anyio's blocking portal), `pushing` (the
pusher that carries on across interruptions), `cursors` (entries and where a read starts),
`errors`. This package imports nothing of the server.
"""
from .aio import DEFAULT_URL, AsyncClient
from .cursors import Entry, cursor_for_time
from .errors import (
    AuthError, BadRequest, Forbidden, NotFound, PtgError, ServerError, StreamClosed, StreamForbidden, Unreachable,
)
from .pushing import Pusher, PushSummary
from .sync import BlockingPusher, Client

__all__ = [
    "DEFAULT_URL", "AsyncClient", "AuthError", "BadRequest", "BlockingPusher", "Client", "Entry", "Forbidden",
    "NotFound", "PtgError", "PushSummary", "Pusher", "ServerError", "StreamClosed", "StreamForbidden",
    "Unreachable", "cursor_for_time",
]
