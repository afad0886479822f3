"""Every error a client can get, in one table, and the middleware that refuses bad requests early.

`TABLE` maps each exception type that handlers raise to its HTTP status and its WebSocket close
code; `as_http` and `as_websocket` turn any exception into Starlette's `HTTPException` or
`WebSocketException` from it. docs/protocol.md prints the same table.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from python_multipart.exceptions import FormParserError
from starlette.exceptions import HTTPException, WebSocketException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .framing import FramingError
from .permissions import BadPatterns
from .permissions import Forbidden as Forbidden  # (re-exported: routes/recordings.py catches errors.Forbidden)
from .recordings.mcapread import RecordTooLarge, UnreadableRecording
from .producers import SequenceRefused
from .store import StoreError, StoreUnavailable

log = logging.getLogger("ptgstore.errors")

# WebSocket close codes (RFC 6455, section 7.4.1)
NORMAL = 1000
GOING_AWAY = 1001
UNSUPPORTED = 1003  # a text message where a binary one belongs, or the reverse
INVALID = 1007  # a malformed message, stream id or query option
POLICY = 1008  # a well-formed request the route refuses
TOO_BIG = 1009
SERVER_ERROR = 1011  # the store is unavailable, or a bug
INTERNAL = "internal server error"
MAX_REASON = 120  # bytes: a close reason over 123 is a protocol error that drops the socket unexplained


class BadOption(ValueError):
    """A query option with a value the route cannot use."""


class Refused(ValueError):
    """Well-formed options in a combination the route refuses."""


class WrongMessageType(ValueError):
    """A text WebSocket message where a binary one belongs, or the reverse."""


class TooLarge(ValueError):
    """A request body or WebSocket message over the configured limit."""


@dataclass(frozen=True)
class Reply:
    status: int  # over HTTP
    close: int  # on a WebSocket
    meaning: str = ""  # for people: /openapi.json and /asyncapi.json print it beside the code


TABLE: dict[type[BaseException], Reply] = {
    # malformed like any other data: the protocol's 1007 since the start
    BadOption: Reply(400, INVALID, "a malformed query option (`header=xml`, `ack=perhaps`, `count=0`)"),
    Refused: Reply(400, POLICY, "well-formed options in a combination the route refuses (an unbatched push "
                                "to several streams; `producer` without `seq` or `ack=true`)"),
    FramingError: Reply(400, INVALID, "malformed data: a stream id (in the path or a header), a batch header, "
                                      "offsets, entry ids, timestamps, `count`, `last_entry_id`; a path that "
                                      "is not UTF-8 or holds a control character"),
    StoreError: Reply(400, INVALID, "data the stream cannot take (a timestamp older than its newest entry, "
                                    "a key of another type)"),
    WrongMessageType: Reply(400, UNSUPPORTED, "a text message where a binary one belongs, or the reverse"),
    # Starlette before 1.7 lets a malformed multipart body through as this
    FormParserError: Reply(400, INVALID, "a malformed multipart upload"),
    TooLarge: Reply(413, TOO_BIG, "a body or message larger than the configured maximum (PTGSTORE_MAX_MESSAGE)"),
    Forbidden: Reply(403, POLICY, "a valid token without the permission (the reason names it)"),
    BadPatterns: Reply(400, INVALID, "a malformed read or write pattern asked of /token/derive"),
    RecordTooLarge: Reply(413, TOO_BIG, "an MCAP chunk or entry over the server's limits (a recording, an upload)"),
    UnreadableRecording: Reply(400, INVALID, "an MCAP file that is damaged, truncated or compressed otherwise"),
    SequenceRefused: Reply(409, POLICY, "a producer's batch number the server cannot vouch for (older than "
                                        "what it remembers, or a resend unlike the batch stored under it)"),
    StoreUnavailable: Reply(503, SERVER_ERROR, "Redis is unavailable (down, loading, timing out)"),
}
UNEXPECTED = Reply(500, SERVER_ERROR, "a bug in the server (logged with its traceback)")


def replies_named(names: list[str], where: str) -> list[Reply]:
    """The table's replies to the exceptions a handler's docstring says it raises (by class name), for the
    API documents; a name the table does not know is a mistake in that docstring."""
    by_name = {kind.__name__: reply for kind, reply in TABLE.items()}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"{where}: raises {unknown[0]!r}, which errors.TABLE does not know")
    return [by_name[name] for name in names]

# refusals of the gate in front of every route (auth.py), before any handler runs
GATE = {
    401: "no acceptable token: missing, malformed, expired, wrongly signed, of a removed user or of a "
         "credential policy no longer in force (`WWW-Authenticate: Bearer`)",
    403: "a valid token without the permission (`forbidden: ...`); a state-changing request authenticated "
         "by the cookie alone from another site's page (or a socket from an origin not allowed); a request "
         "on a public address under the dev policy",
}
# every request's (guards.HostGuard): listed on every operation of the OpenAPI document
HOST_REFUSED = "a `Host` that does not name this server (DNS rebinding guard; see PTGSTORE_ALLOWED_HOSTS)"
# the closes that are not refusals
CLOSES = {NORMAL: "normal close (a `timeout` without data, a replay done)",
          GOING_AWAY: "the server shuts down (after acknowledging what it received)"}


def reply_for(exc: BaseException) -> Reply:
    for kind in type(exc).__mro__:
        reply = TABLE.get(kind)
        if reply is not None:
            return reply
    return UNEXPECTED


def _reason(exc: BaseException, reply: Reply) -> str:
    return INTERNAL if reply is UNEXPECTED else str(exc)


def short(reason: str) -> str:
    """A close reason that fits a close frame."""
    return reason.encode()[:MAX_REASON].decode(errors="ignore")


def as_http(exc: BaseException) -> HTTPException:
    if isinstance(exc, HTTPException):
        return exc
    reply = reply_for(exc)
    return HTTPException(reply.status, _reason(exc, reply))


def as_websocket(exc: BaseException) -> WebSocketException:
    if isinstance(exc, WebSocketException):
        return exc
    if isinstance(exc, HTTPException):
        # a REST helper used by a socket route (the replay's recording checks): its 4xx refuses what the
        # request names (an unknown or active recording, a malformed recording id), 1008; a malformed
        # option is a BadOption (1007) through the table
        return WebSocketException(POLICY if exc.status_code < 500 else SERVER_ERROR, short(str(exc.detail)))
    reply = reply_for(exc)
    return WebSocketException(reply.close, short(_reason(exc, reply)))


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """The reply to any exception a route raises, in the protocol's `{"detail": ...}` shape."""
    error = as_http(exc)
    if error.status_code == 503:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    # for a 500, Starlette re-raises after this reply, so the server logs the traceback once
    return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)


EXCEPTION_HANDLERS = {kind: http_error for kind in (HTTPException, *TABLE, Exception)}


class BodyLimitMiddleware:
    """Refuse request bodies larger than `limit` bytes with 413, without reading them into memory;
    `paths` gives other limits to paths under a prefix (uploads, which stream to disk)."""

    def __init__(self, app: ASGIApp, limit: int, paths: dict[str, tuple[int, str]] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.paths = paths or {}

    def _limit(self, path: str) -> tuple[int, str]:
        for prefix, limit in self.paths.items():
            if path.startswith(prefix):
                return limit
        return self.limit, "PTGSTORE_MAX_MESSAGE"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, setting = self._limit(scope.get("path", ""))
        reason = f"request body larger than {limit} bytes ({setting})"
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                error = as_http(TooLarge(reason))
                return await JSONResponse({"detail": error.detail}, status_code=error.status_code)(scope, receive,
                                                                                                  send)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise TooLarge(reason)
            return message

        await self.app(scope, limited_receive, send)


def path_problem(scope: Scope) -> str | None:
    """Why a request path cannot name anything, or None.

    Both cases would otherwise reach another stream silently: the router's `$` matches
    before a trailing newline (`/data/cam%0A` would write to `cam`), and the server
    decodes bytes that are not UTF-8 as U+FFFD (`%FF` and `%FE` would share one stream).
    """
    raw = scope.get("raw_path")
    if raw is not None:
        try:
            unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return "the path is not valid UTF-8 once percent-decoded"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in scope.get("path", "")):
        return "the path contains a control character"
    return None


class PathGuardMiddleware:
    """Refuse paths that are not UTF-8 or hold control characters, as malformed stream ids (FramingError)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = path_problem(scope) if scope["type"] in ("http", "websocket") else None
        if reason is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await receive()  # the websocket.connect event
            # accepted first, so that the client can read why (as for any other malformed stream id)
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": reply_for(FramingError()).close, "reason": reason})
            return
        await JSONResponse({"detail": reason}, status_code=reply_for(FramingError()).status)(scope, receive, send)
