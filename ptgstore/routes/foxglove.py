"""`/foxglove`: the streams live in Foxglove and Lichtblick (Foxglove WebSocket protocol v1).

Channels are streams (`foxglove_channels.Catalogue`, one per process); a subscription rides the hub
like a pull socket (no Redis connection of its own) and feeds a short queue of encoded messages
per subscription: a client that reads slower than the stream grows gets the newest messages and the
oldest waiting are dropped (counted in `ptgstore_foxglove_dropped`). Message payloads are made once
per entry for every socket (cached by the hub's shared delivery, `fanout.made`); a socket adds its 13-byte header.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from typing import Any

import orjson
from starlette.websockets import WebSocket

from .. import __version__, errors, fanout
from ..foxglove_channels import Catalogue, Channel
from ..foxglove_protobuf import protobuf_payloads, variant
from ..foxglove_schemas import RAW_ENCODING, Format, entry_times, payloads
from ..framing import NOW, FramingError, writable_stream_id
from ..instrumentation import socket_tally
from ..store import StoreError, StoreUnavailable
from . import option, permissions, serve_socket
from .live import Endpoint

log = logging.getLogger("ptgstore.foxglove")

SUBPROTOCOL = "foxglove.websocket.v1"
MESSAGE_DATA = 0x01  # server: opcode, subscription id u32, log time u64 (ns), payload (little-endian)
CLIENT_MESSAGE_DATA = 0x01  # client: opcode, channel id u32, payload
HEADER = struct.Struct("<BIQ")
CLIENT_HEADER = struct.Struct("<BI")
PUBLISH_ENCODINGS = ("json", RAW_ENCODING)
READ_COUNT = 64  # entries taken from the hub per wake-up
MAX_QUEUED = 1024  # messages waiting per subscription at most (and at most foxglove_queue_bytes)
MAX_CLIENT_CHANNELS = 1024
DROPS_SAID_EVERY = 5.0  # seconds between status warnings about dropped messages, per socket
MAX_U32 = 2**32 - 1
SESSION_ID = str(time.time_ns())  # the same for every socket of this process (a reconnect can tell)
INFO, WARNING, ERROR = 0, 1, 2


def permitted(ws: WebSocket, sid: str, write: bool) -> bool:
    """Whether the caller of this socket may read (or with `write`, push to) the stream: the one place
    the endpoint asks, through the routes' one permission helper (the token's scope as the socket opened)."""
    allowed = permissions(ws)
    return allowed.can_write(sid) if write else allowed.can_read(sid)


def catalogue_of(app) -> Catalogue:
    catalogue = getattr(app.state, "foxglove", None)
    if catalogue is None:
        catalogue = app.state.foxglove = Catalogue(app.state.store, app.state.settings.foxglove_scan_ms / 1000)
    return catalogue


async def _session(ws: WebSocket, receive, send) -> None:
    """`ws://host:7890/foxglove?token=...&images=json|protobuf` with subprotocol `foxglove.websocket.v1`.

    A Foxglove WebSocket server (spec: github.com/foxglove/ws-protocol, docs/spec.md) on the same
    port as everything else. After `serverInfo` (capability `clientPublish`), every stream the
    token may read is advertised as a channel, and streams that appear or are deleted later are
    advertised and unadvertised as they come and go. JPEG/PNG entries arrive as
    `foxglove.CompressedImage` (json), streams whose metadata names the `depth-u16-mm` layout as
    `foxglove.RawImage` 16UC1, `imu-d6f` as `ptgstore.Imu` JSON (one message per sample), JSON
    objects as they are (json, with a schema inferred from the newest entry), anything else as its
    raw bytes (`application/octet-stream`); with `images=protobuf` images and depth go as protobuf
    (the image bytes without base64). A message's log time is its entry's time (ms in ns, plus
    the sequence number). A client channel (`advertise` with encoding `json` or
    `application/octet-stream`, topic = a stream id) publishes entries into that stream like a push.
    Binary messages start with a one-byte opcode, then little-endian ids and times (the spec's).
    ---
    path: {}
    query:
      images: {type: string, enum: [json, protobuf], default: json, description: how images and depth are encoded}
    subprotocol: foxglove.websocket.v1
    raises: [BadOption, Refused, FramingError, StoreError, TooLarge, StoreUnavailable]
    send:
      serverInfo: {summary: "first: the server's name, capabilities (`clientPublish`) and encodings", contentType: application/json, payload: {type: object, required: [op], properties: {op: {const: serverInfo}}}}
      advertise: {summary: "channels (streams) that appeared, with topic, encoding, schema name and schema", contentType: application/json, payload: {type: object, required: [op, channels], properties: {op: {const: advertise}, channels: {type: array}}}}
      unadvertise: {summary: channels (streams) that were deleted, contentType: application/json, payload: {type: object, required: [op, channelIds], properties: {op: {const: unadvertise}}}}
      status: {summary: "a warning or error for the client (a refused request, dropped messages, Redis down)", contentType: application/json, payload: {type: object, required: [op, level, message], properties: {op: {const: status}}}}
      messageData: {summary: "opcode 0x01, subscription id (u32), log time (u64 ns), the message", contentType: application/octet-stream, payload: {type: string, format: binary}}
    receive:
      subscribe: {summary: "subscribe to channels (the client's subscription ids)", contentType: application/json, payload: {type: object, required: [op, subscriptions], properties: {op: {const: subscribe}}}}
      unsubscribe: {summary: end subscriptions, contentType: application/json, payload: {type: object, required: [op, subscriptionIds], properties: {op: {const: unsubscribe}}}}
      clientAdvertise: {summary: "`advertise`: client channels to publish into streams (topic = stream id)", contentType: application/json, payload: {type: object, required: [op, channels], properties: {op: {const: advertise}}}}
      clientUnadvertise: {summary: "`unadvertise`: end client channels", contentType: application/json, payload: {type: object, required: [op, channelIds], properties: {op: {const: unadvertise}}}}
      clientMessageData: {summary: "opcode 0x01, client channel id (u32), the entry's bytes", contentType: application/octet-stream, payload: {type: string, format: binary}}
    """
    await serve_socket(ws, lambda ws: Session(ws, receive, send).run())


foxglove = Endpoint(_session, "foxglove")


class Feed:
    """One client subscription: the messages waiting to be sent, newest last, bounded."""

    __slots__ = ("id", "channel", "format", "queue", "bytes", "task")

    def __init__(self, sub_id: int, channel: Channel, fmt: Format):
        self.id = sub_id
        self.channel = channel
        self.format = fmt  # the channel's format as this socket gets it
        self.queue: deque[tuple[int, bytes]] = deque()  # (log time, payload)
        self.bytes = 0
        self.task: asyncio.Task | None = None

    def put(self, messages: list[tuple[int, bytes]], limit: int) -> int:
        """Queue messages; drop the oldest beyond the limits (the newest always stays): how many."""
        queue = self.queue
        for message in messages:
            queue.append(message)
            self.bytes += len(message[1])
        dropped = 0
        while len(queue) > 1 and (self.bytes > limit or len(queue) > MAX_QUEUED):
            self.bytes -= len(queue.popleft()[1])
            dropped += 1
        return dropped

    def take(self) -> tuple[int, bytes]:
        message = self.queue.popleft()
        self.bytes -= len(message[1])
        return message


def _messages(delivery, channel: Channel, fmt: Format) -> list[tuple[int, bytes]]:
    """A hub delivery of one stream as (log time, payload) messages, made once for every socket."""
    key = ("foxglove", channel.id, fmt.kind)  # (channel ids are the process's: every socket shares them)
    cache = fanout.made(delivery)
    made = cache.get(key)
    if made is None:
        made = []
        encode = protobuf_payloads if fmt.encoding == "protobuf" else payloads
        for sid, entry_id, data in delivery.entries:
            log_time = entry_times(entry_id)[0]
            made += [(log_time, payload) for payload in encode(fmt, sid, entry_id, data)]
        cache[key] = made
    return made


class Session:
    """One Foxglove socket: its advertised channels, subscriptions and client channels."""

    def __init__(self, ws: WebSocket, receive, send):
        self.ws = ws
        self.receive = receive
        self.send = send
        app = ws.app
        self.hub = app.state.hub
        self.store = app.state.store
        self.metrics = app.state.metrics
        self.max_message = app.state.settings.max_message
        self.queue_bytes = app.state.settings.foxglove_queue_bytes
        self.catalogue = catalogue_of(app)
        self.advertised: dict[int, Channel] = {}
        self.feeds: dict[int, Feed] = {}  # by subscription id
        self.client_channels: dict[int, tuple[str, str]] = {}  # client channel id -> (stream id, encoding)
        self.ready = asyncio.Event()  # messages are waiting in some feed
        self.dropped = 0  # messages dropped and not yet said in a status
        self.drops_said_at = -DROPS_SAID_EVERY
        self.tally = socket_tally(ws)
        self.protobuf = _images_option(ws.query_params) == "protobuf"

    def format_of(self, channel: Channel) -> Format:
        return variant(channel.format) if self.protobuf else channel.format

    async def run(self) -> None:
        if SUBPROTOCOL not in self.ws.scope.get("subprotocols", ()):
            raise errors.Refused(f"a Foxglove client asks for the subprotocol {SUBPROTOCOL}")
        await self.ws.accept(subprotocol=SUBPROTOCOL)
        await self._json({"op": "serverInfo", "name": f"ptgstore {__version__}", "capabilities": ["clientPublish"],
                          "supportedEncodings": list(PUBLISH_ENCODINGS), "metadata": {"ptgstore": __version__},
                          "sessionId": SESSION_ID})
        async with self.catalogue.listening() as changed:
            if self.catalogue.problem is not None:
                await self._status(ERROR, f"streams not listed: {self.catalogue.problem}")
            await self._advertise(initial=True)
            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(self._read()), loop.create_task(self._write()),
                     loop.create_task(self._follow_catalogue(changed))]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # the reader's end (or error) ends the socket
            finally:
                for task in tasks:
                    task.cancel()
                for feed in list(self.feeds.values()):
                    self._end_feed(feed)
                await asyncio.gather(*tasks, return_exceptions=True)

    # -- sending ---------------------------------------------------------------------------------

    async def _json(self, message: dict) -> None:
        await self.send({"type": "websocket.send", "text": orjson.dumps(message).decode()})

    async def _status(self, level: int, message: str) -> None:
        await self._json({"op": "status", "level": level, "message": message})

    async def _write(self) -> None:
        """Send the waiting messages, one per subscription in turn, as the socket takes them."""
        while True:
            await self.ready.wait()
            self.ready.clear()
            sent = True
            while sent:
                sent = False
                if self.dropped and time.monotonic() - self.drops_said_at >= DROPS_SAID_EVERY:
                    self.drops_said_at = time.monotonic()
                    dropped, self.dropped = self.dropped, 0
                    await self._status(WARNING, f"{dropped} messages dropped: this client reads more slowly than "
                                                "its subscriptions grow (the newest are kept)")
                for feed in list(self.feeds.values()):
                    if feed.queue:
                        log_time, payload = feed.take()
                        await self.send({"type": "websocket.send",
                                         "bytes": HEADER.pack(MESSAGE_DATA, feed.id, log_time) + payload})
                        self.tally(1, len(payload))
                        sent = True

    # -- channels --------------------------------------------------------------------------------

    async def _follow_catalogue(self, changed: asyncio.Event) -> None:
        while True:
            await changed.wait()
            changed.clear()
            await self._advertise()

    async def _advertise(self, initial: bool = False) -> None:
        """Advertise the catalogue's channels this socket does not know yet, unadvertise the gone."""
        current = {channel.id: channel for channel in self.catalogue.channels.values()
                   if permitted(self.ws, channel.sid, write=False)}
        gone = [cid for cid in self.advertised if cid not in current]
        new = [channel for cid, channel in current.items() if cid not in self.advertised]
        self.advertised = current
        if gone:
            for feed in [feed for feed in self.feeds.values() if feed.channel.id in gone]:
                self._end_feed(feed)
            await self._json({"op": "unadvertise", "channelIds": gone})
        if new or initial:
            await self._json({"op": "advertise",
                              "channels": [self.format_of(channel).channel(channel.id, channel.sid) for channel in new]})

    # -- the client's messages ---------------------------------------------------------------------

    async def _read(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await self._client_data(message["bytes"])
            elif message.get("text") is not None:
                await self._client_op(message["text"])

    async def _client_op(self, text: str) -> None:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            await self._status(ERROR, "a text message must be a JSON object with an `op`")
            return
        op: Any = request.get("op") if isinstance(request, dict) else None
        handler = {"subscribe": self._subscribe, "unsubscribe": self._unsubscribe,
                   "advertise": self._client_advertise, "unadvertise": self._client_unadvertise}.get(op)
        if handler is None:
            await self._status(ERROR, f"unsupported op {str(op)[:40]!r}: this server supports subscribe, "
                                      "unsubscribe, advertise, unadvertise and message data")
            return
        problems = handler(request)
        for problem in problems:
            await self._status(ERROR, problem)

    def _subscribe(self, request: dict) -> list[str]:
        problems: list[str] = []
        for item in _items(request, "subscriptions", problems):
            sub_id: Any = item.get("id")
            channel_id: Any = item.get("channelId")
            channel = self.advertised.get(channel_id) if _u32(channel_id) else None
            if not _u32(sub_id):
                problems.append(f"subscribe: id must be an integer 0..{MAX_U32}")
            elif channel is None:
                problems.append(f"subscribe: channel {str(channel_id)[:20]} is not advertised")
            elif sub_id in self.feeds:
                problems.append(f"subscribe: subscription id {sub_id} is in use")
            elif any(feed.channel.id == channel.id for feed in self.feeds.values()):
                problems.append(f"subscribe: channel {channel.id} is subscribed already")
            else:
                feed = self.feeds[sub_id] = Feed(sub_id, channel, self.format_of(channel))
                feed.task = asyncio.get_running_loop().create_task(self._feed(feed), name=f"ptgstore-foxglove-{sub_id}")
        return problems

    def _unsubscribe(self, request: dict) -> list[str]:
        problems: list[str] = []
        ids: Any = request.get("subscriptionIds")
        if not isinstance(ids, list):
            return ["unsubscribe: subscriptionIds must be a list"]
        sub_id: Any
        for sub_id in ids:
            feed = self.feeds.get(sub_id) if _u32(sub_id) else None
            if feed is None:
                problems.append(f"unsubscribe: no subscription {str(sub_id)[:20]}")
            else:
                self._end_feed(feed)
        return problems

    def _end_feed(self, feed: Feed) -> None:
        if self.feeds.get(feed.id) is feed:
            del self.feeds[feed.id]
        if feed.task is not None and feed.task is not asyncio.current_task():
            feed.task.cancel()
        feed.queue.clear()

    async def _feed(self, feed: Feed) -> None:
        """Follow one stream through the hub from now on, into the feed's queue."""
        sid = feed.channel.sid
        try:
            async with self.hub.open([sid], NOW) as subscription:
                while True:
                    delivery = await subscription.next(READ_COUNT)
                    if delivery is None:
                        return
                    if delivery.entries:
                        dropped = feed.put(_messages(delivery, feed.channel, feed.format), self.queue_bytes)
                        if dropped:
                            self.metrics.foxglove_dropped.inc(dropped)
                            self.dropped += dropped
                        self.ready.set()
        except Exception as exc:  # (not a cancellation: that is the end asked for)
            if not isinstance(exc, (StoreUnavailable, StoreError)):
                log.exception("foxglove subscription to %s failed", sid)
            reason = str(exc) if isinstance(exc, (StoreUnavailable, StoreError)) else errors.INTERNAL
            self._end_feed(feed)
            with contextlib.suppress(OSError, RuntimeError):
                await self._status(ERROR, f"subscription {feed.id} ({sid}) ended: {reason}")

    def _client_advertise(self, request: dict) -> list[str]:
        problems: list[str] = []
        for item in _items(request, "channels", problems):
            channel_id: Any = item.get("id")
            topic, encoding = item.get("topic"), item.get("encoding")
            if not _u32(channel_id):
                problems.append(f"advertise: id must be an integer 0..{MAX_U32}")
                continue
            try:
                sid = writable_stream_id(topic if isinstance(topic, str) else "")  # (not the server's own)
            except FramingError as exc:
                problems.append(f"advertise: channel {channel_id}: {exc}")
                continue
            if encoding not in PUBLISH_ENCODINGS:
                problems.append(f"advertise: channel {channel_id}: encoding must be one of {', '.join(PUBLISH_ENCODINGS)}")
            elif not permitted(self.ws, sid, write=True):
                problems.append(f"advertise: channel {channel_id}: this token may not write to {sid}")
            elif channel_id not in self.client_channels and len(self.client_channels) >= MAX_CLIENT_CHANNELS:
                problems.append(f"advertise: at most {MAX_CLIENT_CHANNELS} client channels per socket")
            else:
                self.client_channels[channel_id] = (sid, encoding)
        return problems

    def _client_unadvertise(self, request: dict) -> list[str]:
        ids = request.get("channelIds")
        problems: list[str] = []
        if not isinstance(ids, list):
            return ["unadvertise: channelIds must be a list"]
        for channel_id in ids:
            if not _u32(channel_id) or self.client_channels.pop(channel_id, None) is None:
                problems.append(f"unadvertise: no client channel {str(channel_id)[:20]}")
        return problems

    async def _client_data(self, data: bytes) -> None:
        """A client message: stored as one entry of the channel's stream, as a push stores it."""
        if len(data) < CLIENT_HEADER.size or data[0] != CLIENT_MESSAGE_DATA:
            await self._status(ERROR, "binary messages from a client are message data (opcode 0x01, channel id)")
            return
        _, channel_id = CLIENT_HEADER.unpack_from(data)
        target = self.client_channels.get(channel_id)
        if target is None:
            await self._status(ERROR, f"message data for channel {channel_id}, which this client has not advertised")
            return
        sid, encoding = target
        payload = data[CLIENT_HEADER.size:]
        if len(payload) > self.max_message:
            raise errors.TooLarge(f"message larger than {self.max_message} bytes")
        if encoding == "json":
            try:
                orjson.loads(payload)
            except orjson.JSONDecodeError:
                await self._status(ERROR, f"channel {channel_id} is json: a message that is not JSON was not stored")
                return
        try:
            await self.store.add([(sid, "*", payload)])
        except StoreError as exc:
            await self._status(ERROR, f"not stored in {sid}: {exc}")
            return
        entries, nbytes = self.metrics.entry_counters("websocket", sid)[:2]
        entries.inc()
        nbytes.inc(len(payload))


def _images_option(params) -> str:
    """`images=json` (the default: as recordings) or `images=protobuf` (image bytes without base64)."""
    value = option(params, "images", "json")
    if value not in ("json", "protobuf"):
        raise errors.BadOption(f"images must be json or protobuf, not {value[:40]!r}")
    return value


def _u32(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_U32


def _items(request: dict, name: str, problems: list[str]) -> list[dict]:
    items = request.get(name)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        problems.append(f"{request.get('op')}: {name} must be a list of objects")
        return []
    return items
