"""`/mjpeg/{sid}`: a camera stream as MJPEG, for an `<img>` tag (compatible with the original).

The response rides the hub like a pull socket: a subscription holds a cursor, and the next frame
is taken only once the previous part has been sent, so a client that stops reading holds no frames
and no Redis connection of its own.
"""
from __future__ import annotations

import asyncio
import contextlib
from importlib import resources

from starlette.requests import Request

from ..framing import BEGINNING, NEWEST, NOW, cursor_before, parse_count, parse_cursors, parse_entry_id, \
    validate_stream_id
from . import option, query_bool, require

BOUNDARY = b"frame"
MEDIA_TYPE = "multipart/x-mixed-replace; boundary=frame"
STANDBY_AFTER = 10.0  # seconds without a frame before the stand-by image is shown again (as the original)
JPEG, PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
STANDBY = resources.files("ptgstore").joinpath("static/standby.jpg").read_bytes()


def part(image: bytes, content_type: str = "image/jpeg") -> bytes:
    """One multipart part: boundary, headers, the image, CRLF (byte for byte the original's framing)."""
    return b"--" + BOUNDARY + b"\r\nContent-Type: " + content_type.encode() + b"\r\n\r\n" + image + b"\r\n"


def image_type(data: bytes) -> str | None:
    """The content type of an entry an `<img>` can show, or None (other entries are skipped)."""
    if data.startswith(JPEG):
        return "image/jpeg"
    if data.startswith(PNG):
        return "image/png"
    return None


async def stream(request: Request):
    """A camera stream as MJPEG for an `<img>` tag: a streaming response that never ends while the client reads.

    `multipart/x-mixed-replace; boundary=frame`: each part is
    `--frame\\r\\nContent-Type: image/jpeg\\r\\n\\r\\n<the entry's bytes>\\r\\n` (PNG entries as
    `image/png`; other entries are skipped). When nothing after the cursor exists yet the first part
    is a stand-by image, sent again after 10 s without a new image. `HEAD` answers the headers only.
    ---
    query:
      last_entry_id: {$ref: "#/components/schemas/Cursor", description: "where to start, as on a pull socket (default `$`)"}
      count: {$ref: "#/components/schemas/Count", description: "images per read with `latest=false` (1 to 100000)"}
      latest: {flag: true, description: each part is the newest image when the client is ready for it (a slow viewer skips frames)}
    raises: [FramingError, StoreError, StoreUnavailable]
    responses:
      200:
        description: an endless multipart body, one image per part
        content: {multipart/x-mixed-replace: {schema: {type: string, format: binary}}}
    """
    sid = validate_stream_id(request.path_params["sid"])
    require(request, "read", [sid])
    params = request.query_params
    (cursor,) = parse_cursors(option(params, "last_entry_id", NOW), 1)
    count = parse_count(option(params, "count"))
    latest = query_bool(params, "latest", default=True)
    hub = request.app.state.hub
    (newest,) = await hub.last_ids([sid])
    if cursor == NOW:
        cursor = newest
    elif cursor == NEWEST:
        cursor = await _before_newest(request.app.state.store, sid, 1 if latest else count)
    waiting = parse_entry_id(newest) <= parse_entry_id(cursor)
    return MJPEGResponse(request, sid, cursor, count, latest, standby_first=waiting)


async def _before_newest(store, sid: str, count: int) -> str:
    """`*`: a cursor just before the newest `count` entries (the beginning of a shorter stream)."""
    entries = await store.read([(sid, NEWEST, count)])
    if not entries:
        return BEGINNING
    return cursor_before(entries[0][1])


class MJPEGResponse:
    """The multipart body, part after part, until the client leaves (an ASGI app)."""

    def __init__(self, request: Request, sid: str, cursor: str, count: int, latest: bool, standby_first: bool):
        self.request = request
        self.sid, self.cursor, self.count, self.latest = sid, cursor, count, latest
        self.standby_first = standby_first  # nothing after the cursor yet: the stand-by image at once

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", MEDIA_TYPE.encode()),
            (b"cache-control", b"no-cache, no-store, must-revalidate"),
            (b"x-content-type-options", b"nosniff"),
        ]})
        if scope["method"] == "HEAD":  # the headers only: the body would never end
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        hub = self.request.app.state.hub
        async with hub.subscribe([self.sid], [self.cursor]) as subscription:
            watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, subscription))
            try:
                await self._frames(send, subscription)
            except OSError:
                pass  # the client left while a part was being sent
            finally:
                watcher.cancel()
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _frames(self, send, subscription) -> None:
        metrics = self.request.app.state.metrics
        standby = self.standby_first  # whether the client is shown the stand-by image now
        if standby:
            await send({"type": "http.response.body", "body": part(STANDBY), "more_body": True})
        waiting = None
        try:
            while True:
                if waiting is None:
                    waiting = asyncio.ensure_future(subscription.next(self.count, latest=self.latest))
                done, _ = await asyncio.wait({waiting}, timeout=None if standby else STANDBY_AFTER)
                if not done:  # the camera stopped: say so
                    await send({"type": "http.response.body", "body": part(STANDBY), "more_body": True})
                    standby = True
                    continue
                delivery, waiting = waiting.result(), None
                if delivery is None:
                    return  # the client left
                for _, _, data in delivery.entries:
                    content_type = image_type(data)
                    if content_type is None:
                        continue
                    await send({"type": "http.response.body", "body": part(data, content_type), "more_body": True})
                    metrics.entries(self.request, False, 1, len(data))
                    standby = False
        finally:
            if waiting is not None:
                waiting.cancel()


async def _watch_disconnect(receive, subscription) -> None:
    """End the subscription (and so the response) when the client disconnects."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            subscription.close()
            return
