"""How ptgstore is served: uvicorn's options, its WebSocket protocol, the request-line limit
and the garbage collector's tuning. The only module that knows uvicorn's internals.

The protocol is uvicorn's sans-I/O WebSocket protocol with a shutdown that loses no
acknowledgement. On SIGTERM uvicorn stops accepting, then asks each connection to shut
down. Its own protocols answer by sending close 1012 and dropping the transport at once:
a batch that the handler is storing at that moment lands in Redis but its ack can no
longer be sent, and the client resends it. This protocol drains instead: the handler is
told the socket is ending only after the messages already received (so it stores and
acks them), and once the handler returns the socket is closed with 1001 (going away).
uvicorn still cancels whatever is left after `timeout_graceful_shutdown`.
"""
from __future__ import annotations

import asyncio
import gc
import time
from typing import Any, Callable

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets import http11

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools (Windows, PyPy): uvicorn's h11 protocol, without the header timeout
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

from .errors import GOING_AWAY
from .wsframes import FRAMES
from .instrumentation import SERVER_INITIATED, SHUTDOWN_REASON

# the import strings for uvicorn's `--ws` and `--http` (Procfile, Dockerfile, docs/deployment.md)
PROTOCOL = "ptgstore.serving:GracefulWebSocketProtocol"
HTTP_PROTOCOL = "ptgstore.serving:HeaderTimeoutProtocol"

# Seconds a client has to send a request's headers, from connecting (or, on a kept-alive connection,
# from the previous response plus uvicorn's keep-alive time): uvicorn itself waits forever, so a few
# hundred connections that never finish their headers would hold the server's sockets (slowloris).
HEADER_TIMEOUT = 10.0

# A long stream list (`/data/a+b+...+z/pull`) makes a request line over websockets' 8 KiB
# default, and uvicorn's sans-I/O protocol then never answers the handshake at all.
MAX_REQUEST_LINE = 64 * 1024

GC_YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest objects
GC_FULL_EVERY = 60.0  # seconds between full collections at most
GC_AFTER_CLOSES = 100  # closed sockets that bring the next full collection forward


def allow_long_request_lines() -> None:
    """Raise websockets' request-line limit to MAX_REQUEST_LINE.

    websockets reads the limit from a module constant at each handshake (its only knob is the
    WEBSOCKETS_MAX_LINE_LENGTH variable, read when it is imported, often before ptgstore is), so
    it is raised here, when a ptgstore socket is served, rather than when this module is imported.
    """
    if http11.MAX_LINE_LENGTH < MAX_REQUEST_LINE:
        http11.MAX_LINE_LENGTH = MAX_REQUEST_LINE


def uvicorn_options(max_message: int) -> dict[str, Any]:
    """The uvicorn settings every way of serving ptgstore shares (`ptgstore serve`, the tests)."""
    return {
        **({"http": HTTP_PROTOCOL} if HttpToolsProtocol is not None else {}),
        "ws": PROTOCOL,
        # per-message deflate burns CPU on JPEG and depth frames that do not compress
        "ws_per_message_deflate": False,
        "ws_max_size": max_message,
        "timeout_graceful_shutdown": 10,
    }


class GracefulWebSocketProtocol(WebSocketsSansIOProtocol):
    """Finish and ack what was received, then close with 1001, when the server shuts down."""

    def __init__(self, *args, **kwargs):
        allow_long_request_lines()
        super().__init__(*args, **kwargs)
        self.draining = False
        self.transport_lost = False  # (uvicorn's own flag for this only exists from 0.53)
        application = self.app

        async def run_then_say_goodbye(scope, receive, send):
            await application(scope, receive, send)
            if self.draining and not self.close_sent and not self.transport_lost:
                await self.send({"type": "websocket.close", "code": GOING_AWAY, "reason": SHUTDOWN_REASON})

        self.app = run_then_say_goodbye

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport_lost = True
        super().connection_lost(exc)

    def handle_connect(self, event) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # (none when the handshake was refused)
        if scope is not None:
            extensions = scope.get("extensions")
            if extensions is None:
                extensions = scope["extensions"] = {}
            extensions[FRAMES] = FrameSink(self)

    def shutdown(self) -> None:
        open_socket = (self.handshake_complete and not self.close_sent and not self.transport_lost
                       and self.initial_response is None)
        if not open_socket:
            super().shutdown()
            return
        if self.draining:
            return
        self.draining = True
        # queued behind the messages already received: the handler stores those first
        event: Any = {"type": "websocket.disconnect", "code": GOING_AWAY, "reason": SHUTDOWN_REASON,
                      SERVER_INITIATED: True}  # (ASGI allows keys beyond the spec's; its TypedDict does not)
        self.queue.put_nowait(event)


class FrameSink:
    """Frame bytes made elsewhere (`ptgstore.wsframes`), written to one accepted socket's transport as
    they are, past the WebSocket library: what the library's own send would write for a data
    message, encoded once for many sockets. Given to the app in the scope's extensions (`FRAMES`)."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: GracefulWebSocketProtocol):
        self.protocol = protocol

    def ready(self) -> bool:
        """Whether the socket is open for data and its transport takes more without waiting (its write
        buffer is under the high-water mark): else wait for it (`drained`), or use the ASGI send."""
        p = self.protocol
        return (p.handshake_complete and not p.close_sent and not p.transport_lost and p.initial_response is None
                and p.writable.is_set() and not p.transport.is_closing())

    async def drained(self) -> bool:
        """Wait until the transport takes more (its write buffer fell under the low-water mark, or the
        connection is gone); then whether the socket is `ready()`."""
        await self.protocol.writable.wait()
        return self.ready()

    def write(self, frames: tuple[bytes, ...]) -> None:
        """Write whole frames (only after `ready()`, with nothing awaited in between)."""
        if len(frames) == 1:
            self.protocol.transport.write(frames[0])
        else:  # (one system call for all, where the event loop gathers them: uvloop does)
            self.protocol.transport.writelines(frames)


if HttpToolsProtocol is not None:
    class HeaderTimeoutProtocol(HttpToolsProtocol):
        """uvicorn's HTTP protocol that closes a connection whose request headers are not complete
        HEADER_TIMEOUT seconds after it opened (or after the previous response, past the keep-alive
        time). A request being answered, a body being received and an upgraded WebSocket are not
        limited."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.header_timer: asyncio.TimerHandle | None = None

        def _await_headers(self, within: float) -> None:
            self._headers_arrived()
            self.header_timer = self.loop.call_later(within, self._headers_too_slow)

        def _headers_arrived(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_too_slow(self) -> None:
            self.header_timer = None
            if not self.transport.is_closing():
                self.logger.debug("closing a connection whose request headers took over %.0f s", HEADER_TIMEOUT)
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._await_headers(HEADER_TIMEOUT)

        def on_headers_complete(self) -> None:
            self._headers_arrived()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)  # (its headers are in already)
            super().on_response_complete()
            if not pipelined and not self.transport.is_closing():
                self._await_headers(self.timeout_keep_alive + HEADER_TIMEOUT)

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_arrived()
            super().connection_lost(exc)


async def collect_garbage(open_sockets: Callable[[], int]) -> None:
    """Run full collections of the cyclic garbage collector on a clock, and soon after many
    sockets closed, rather than on allocation counts.

    With Python's defaults, a fan-out to many pull sockets ran collections so often that they
    paused every socket (see docs/performance.md). Young objects are collected every
    GC_YOUNG_THRESHOLD allocations instead of 700, and what exists at start-up (modules, routes)
    is left out of collections. Full collections then become rare, so one runs within a second
    once GC_AFTER_CLOSES sockets have closed (a closed socket is a cycle of objects that only a
    full collection frees: without this, memory grows with every socket ever opened), and at least
    every GC_FULL_EVERY seconds (more often, they would pause live sockets again)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)
    last = time.monotonic()
    most = open_sockets()
    while True:
        await asyncio.sleep(1)
        now = open_sockets()
        most = max(most, now)
        if most - now >= GC_AFTER_CLOSES or time.monotonic() - last >= GC_FULL_EVERY:
            gc.collect()
            last, most = time.monotonic(), now
