"""uvicorn's sans-I/O WebSocket protocol, with a shutdown that loses no acknowledgement.

On SIGTERM uvicorn stops accepting, then asks each connection to shut down. Its own
WebSocket protocols answer by sending close 1012 and dropping the transport at once:
a batch that the handler is storing at that moment lands in Redis but its ack can no
longer be sent, and the client resends it. This protocol drains instead: the handler
is told the socket is ending only after the messages already received (so it stores
and acks them), and once the handler returns the socket is closed with 1001 (going
away). Use it with `--ws ptgstore.graceful:GracefulWebSocketProtocol`; `ptgstore
serve` does. uvicorn still cancels whatever is left after `timeout_graceful_shutdown`.
It also answers handshakes with request lines up to 64 KiB (see MAX_REQUEST_LINE).
"""
from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets import http11

from .metrics import SHUTDOWN_REASON

GOING_AWAY = 1001

# A long stream list (`/data/a+b+...+z/pull`) makes a request line over websockets' 8 KiB
# default, and uvicorn's sans-I/O protocol then never answers the handshake at all.
# This is the value behind websockets' WEBSOCKETS_MAX_LINE_LENGTH knob, read per request.
MAX_REQUEST_LINE = 64 * 1024
http11.MAX_LINE_LENGTH = max(http11.MAX_LINE_LENGTH, MAX_REQUEST_LINE)


class GracefulWebSocketProtocol(WebSocketsSansIOProtocol):
    """Finish and ack what was received, then close with 1001, when the server shuts down."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.draining = False
        application = self.app

        async def run_then_say_goodbye(scope, receive, send):
            await application(scope, receive, send)
            if self.draining and not self.close_sent and not self.disconnected:
                await self.send({"type": "websocket.close", "code": GOING_AWAY, "reason": SHUTDOWN_REASON})

        self.app = run_then_say_goodbye

    def shutdown(self) -> None:
        open_socket = (self.handshake_complete and not self.close_sent and not self.disconnected
                       and self.initial_response is None)
        if not open_socket:
            super().shutdown()
            return
        if self.draining:
            return
        self.draining = True
        # queued behind the messages already received: the handler stores those first
        self.queue.put_nowait({"type": "websocket.disconnect", "code": GOING_AWAY, "reason": SHUTDOWN_REASON})
