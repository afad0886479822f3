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

from ..framing import NEWEST, parse_count, parse_cursors, validate_stream_id
from . import option, query_bool, require

BOUNDARY = b"frame"
MEDIA_TYPE = "multipart/x-mixed-replace; boundary=frame"
STANDBY_AFTER = 10.0  # seconds without a frame before the stand-by image is shown again (as the original)
JPEG, PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
_static = resources.files("ptgstore").joinpath("static")
STANDBY = _static.joinpath("standby.jpg").read_bytes()  # "no frames in this stream yet"
STANDBY_WAITING = _static.joinpath("standby-waiting.jpg").read_bytes()  # "waiting for new frames"


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
    `image/png`; other entries are skipped). Without `last_entry_id` the first part is the stream's
    newest image (the camera as it is now), then each new one. When nothing after the cursor exists
    yet the first part is a stand-by image ("no frames in this stream yet" for a stream that never
    held an entry, else "waiting for new frames"), sent again after 10 s without a new image. `HEAD`
    answers the headers only.
    ---
    query:
      last_entry_id: {$ref: "#/components/schemas/Cursor", description: "where to start, as on a pull socket (default: the newest entry, then what follows: `*` with one entry)"}
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
    given = option(params, "last_entry_id")
    # no cursor given: the newest entry first (a viewer sees the camera at once), then what follows
    (cursor,) = parse_cursors(given, 1) if given is not None else [NEWEST]
    count = parse_count(option(params, "count"))
    latest = query_bool(params, "latest", default=True)
    # `*`: the newest image with `latest`, else the newest `count` (without a cursor: the newest one)
    return MJPEGResponse(request, sid, cursor, count, latest, 1 if latest or given is None else count)


class MJPEGResponse:
    """The multipart body, part after part, until the client leaves (an ASGI app)."""

    def __init__(self, request: Request, sid: str, cursor: str, count: int, latest: bool, newest_count: int):
        self.request = request
        self.sid, self.cursor, self.count, self.latest = sid, cursor, count, latest
        self.newest_count = newest_count  # how many entries `*` starts before

    async def __call__(self, scope, receive, send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", MEDIA_TYPE.encode()),
            (b"cache-control", b"no-cache, no-store, must-revalidate"),
            (b"x-content-type-options", b"nosniff"),
        ]}
        if scope["method"] == "HEAD":  # the headers only: the body would never end
            await send(start)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        # opened before the answer starts: a store that cannot be read is still a 503
        async with self.request.app.state.hub.open([self.sid], [self.cursor], self.newest_count) as subscription:
            await send(start)
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

        async def stand_by() -> None:
            # "no frames yet" only for a stream that never held an entry: else it waits for new ones
            image = STANDBY if subscription.newest() == (0, 0) else STANDBY_WAITING
            await send({"type": "http.response.body", "body": part(image), "more_body": True})

        # nothing after the cursor yet: the stand-by image at once
        standby = subscription.cursors[0] >= subscription.newest()  # whether the client is shown it now
        shown = False  # an image of the stream was sent
        if standby:
            await stand_by()
        waiting = None
        try:
            while True:
                if waiting is None:
                    waiting = asyncio.ensure_future(subscription.next(self.count, latest=self.latest))
                done, _ = await asyncio.wait({waiting}, timeout=None if standby else STANDBY_AFTER)
                if not done:  # the camera stopped: say so
                    await stand_by()
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
                    standby, shown = False, True
                if not shown and not standby:  # the first entries held no image: not a blank box meanwhile
                    await stand_by()
                    standby = True
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
