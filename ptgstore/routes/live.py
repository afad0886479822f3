"""WebSocket push and pull: `/data/{sid}/push` and `/data/{sid}/pull`."""
from __future__ import annotations

import asyncio

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import errors, fanout
from ..directsend import direct_send
from ..errors import TooLarge, WrongMessageType
from ..framing import (
    NOW, FramingError, decode_header, parse_count, parse_cursors,
    parse_header_codec, parse_offsets_mode, split_batch, split_writable_stream_ids, unique_stream_ids,
)
from ..instrumentation import socket_tally
from ..wsframes import FRAMES, text_frame
from . import close_socket, option, query_bool, require, serve_socket


def _push_options(params):
    return {
        "batch": query_bool(params, "batch"),
        "ack": query_bool(params, "ack"),
        "codec": parse_header_codec(option(params, "header")),
        "offsets": parse_offsets_mode(option(params, "offsets")),
    }


class Endpoint:
    """A socket route as a plain ASGI app. The handler gets Starlette's WebSocket for the
    handshake, options and close, and for its messages the bare ASGI receive and the server's own
    send (`directsend.direct_send`): a few layers cheaper per message."""

    def __init__(self, session, name: str | None = None):  # name: the socket's channel in /asyncapi.json
        self.session = session
        self.__name__ = name or session.__name__.strip("_").removesuffix("_session")
        self.__doc__ = session.__doc__  # the route's description (asyncapi.py)

    async def __call__(self, scope, receive, send) -> None:
        await self.session(WebSocket(scope, receive, send), receive, direct_send(scope, send))


async def _push_session(ws: WebSocket, receive, send) -> None:
    """Push entries: every binary message one entry, or batches of a header and a blob.

    Not batched: every binary message is one entry of the path's stream. Batched (`batch=true`,
    or the path's stream id `*`): messages alternate a header (JSON text, or MessagePack binary with
    `header=msgpack`) and a binary blob; the header lists the entries, `[sid, offset]`,
    `[sid, ts, offset]` or a bare `offset`. A batch is stored all or nothing. Bad input closes the
    socket with a code and a reason; everything acknowledged before it stays stored.
    ---
    path:
      sid: {description: "a stream id, several joined by `+` (batched), or `*` (batched: the header names each entry's stream)"}
    query:
      batch: {flag: false, description: messages alternate a header and a blob}
      ack: {flag: false, description: "after each stored message the server answers the new entry ids joined by `,`"}
      header: {type: string, enum: [json, msgpack], default: json, description: the header's encoding}
      offsets: {type: string, enum: [auto, start, end], default: auto, description: "how the header's offsets are read (`auto`: first offset 0 means start offsets, last offset equal to the blob's length end offsets)"}
      producer: {type: string, pattern: '^[A-Za-z0-9._~:@-]{1,128}$', description: "an idempotent push: the producer's id (with `seq` and `ack=true`); a resent message is stored once"}
      seq: {type: string, pattern: '^[0-9]+$', description: "the number of the socket's first message (0 to 2^53-1), each next message one more"}
    raises: [BadOption, Refused, FramingError, StoreError, WrongMessageType, TooLarge, SequenceRefused, StoreUnavailable]
    receive:
      entry: {summary: "one entry (not batched)", contentType: application/octet-stream, payload: {type: string, format: binary}}
      header:
        summary: "a batch header: JSON text (or MessagePack binary with `header=msgpack`)"
        contentType: application/json
        payload:
          type: array
          items:
            oneOf:
              - {type: integer, minimum: 0, description: "a bare offset: the path's stream (with `a+b`, the i-th listed stream)"}
              - {type: array, minItems: 2, maxItems: 2, description: "[sid, offset]"}
              - {type: array, minItems: 3, maxItems: 3, description: "[sid, ts, offset]; ts: epoch seconds, an entry id, or null for now"}
      blob: {summary: "a batch's entries, concatenated", contentType: application/octet-stream, payload: {type: string, format: binary}}
    send:
      ack: {summary: "with `ack=true`: the new entry ids joined by `,` (empty for an empty batch)", contentType: text/plain, payload: {type: string}}
    """
    await ws.accept()
    await serve_socket(ws, lambda ws: _push(ws, receive, send))


async def _push(ws: WebSocket, receive, send) -> None:
    path_sid = ws.path_params["sid"]
    options = _push_options(ws.query_params)
    batched = options["batch"] or path_sid == "*"
    if path_sid != "*":
        sids = split_writable_stream_ids(path_sid)  # a malformed stream id is malformed data, not an option
        if not batched and len(sids) > 1:
            raise errors.Refused("unbatched push goes to one stream; use batch=true for several")
    # a `*` push names its streams in each batch: each batch is checked whole before it is stored
    scope = require(ws, "write", sids if path_sid != "*" else [])
    check_each_batch = path_sid == "*" and not scope.write.everything
    producer = _producer(ws, options["ack"])
    add = ws.app.state.store.add if producer is None else producer.add
    limit = ws.app.state.settings.max_message
    tally = socket_tally(ws)
    sink = ws.scope.get("extensions", {}).get(FRAMES)
    while True:
        if batched:
            raw_header = await _receive(receive, limit, "text" if options["codec"] == "json" else "bytes", "header")
            blob = await _receive(receive, limit, "bytes", "blob")
            header = decode_header(raw_header, options["codec"])
            entries = split_batch(header, blob, path_sid, options["offsets"])
            if check_each_batch:
                scope.require("write", {sid for sid, _, _ in entries})
        else:
            entries = [(path_sid, "*", await _receive(receive, limit, "bytes", "entry"))]
        ids = await add(entries)
        if options["ack"]:
            if sink is not None and sink.ready():
                sink.write((text_frame(",".join(ids)),))
            else:
                await send({"type": "websocket.send", "text": ",".join(ids)})
        if producer is None or not producer.repeated:  # a resend stored nothing
            tally(len(ids), len(blob) if batched else len(entries[0][2]))


def _producer(ws: WebSocket, ack: bool):
    """The socket's producer (`producer=` and `seq=`, see producers.py), or None for a plain push."""
    name, first = option(ws.query_params, "producer"), option(ws.query_params, "seq")
    if name is None and first is None:
        return None
    if name is None or first is None or not ack:
        raise errors.Refused("an idempotent push needs producer=, seq= and ack=true together")
    caller = ws.scope.get("state", {}).get("caller")
    return ws.app.state.producers.session(name, caller.user if caller else "", first)


push = Endpoint(_push_session, "push")


async def _receive(receive, limit: int, kind: str, what: str):
    message = await receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    payload = message.get(kind)
    if payload is None:
        other = "text" if kind == "bytes" else "binary"
        raise WrongMessageType(f"expected a {'binary' if kind == 'bytes' else 'text'} {what} message, got {other}")
    if len(payload) > limit:
        raise TooLarge(f"message larger than {limit} bytes")
    return payload


# -- pull ---------------------------------------------------------------------------------------

def _pull_options(params):
    timeout = option(params, "timeout")
    if timeout is not None and not (timeout.isascii() and timeout.isdigit()):
        raise FramingError(f"timeout must be milliseconds, not {timeout!r}")
    return {
        "count": parse_count(option(params, "count")),
        "ack": query_bool(params, "ack"),
        "latest": query_bool(params, "latest"),
        "gaps": query_bool(params, "gaps"),
        "codec": parse_header_codec(option(params, "header")),
        "timeout": int(timeout) / 1000 if timeout else None,
        "last_entry_id": option(params, "last_entry_id", NOW),
        "time_sync_id": option(params, "time_sync_id"),
    }


def _sync_index(value: str | None, sids: list[str]) -> int | None:
    if value is None or value == "":
        return None
    if value in sids:
        return sids.index(value)
    if value.isascii() and value.isdigit() and int(value) < len(sids):
        return int(value)
    raise FramingError(f"time_sync_id {value!r} is neither a pulled stream nor its index")


async def _pull_session(ws: WebSocket, _receive, send) -> None:  # the pull reads acks through `ws`
    """Pull entries as they arrive: each delivery a header message and one binary blob.

    The header is `[[sid, entry_id, start_offset], ...]`: entry *i* is `blob[start_i : start_i+1]`.
    The call blocks: with nothing new, the server waits and delivers as soon as an entry arrives.
    `$` is fixed when the socket opens: nothing pushed after that moment is skipped.
    ---
    path:
      sid: {description: "a stream id, or several joined by `+`"}
    query:
      count: {$ref: "#/components/schemas/Count"}
      last_entry_id: {$ref: "#/components/schemas/Cursor", description: "where to start (default `$`: only entries newer than now); one value per stream joined by `+`"}
      ack: {flag: false, description: after each delivery the server waits for any message from the client}
      latest: {flag: false, description: each delivery carries only the newest entry of each stream that has something new}
      timeout: {type: string, pattern: "^[0-9]+$", description: close normally (1000) after this many milliseconds without data}
      time_sync_id: {type: string, minLength: 1, description: "a pulled stream (or its index): after each delivery every stream's cursor moves to its last delivered id"}
      gaps: {flag: false, description: 'a text message `{"gap": ...}` before entries when the stream was trimmed past the cursor'}
      header: {type: string, enum: [json, msgpack], default: json, description: the header's encoding}
    raises: [BadOption, FramingError, StoreError, StoreUnavailable]
    closes: [1000]
    send:
      header:
        summary: "`[[sid, entry_id, start_offset], ...]`: JSON text (or MessagePack binary with `header=msgpack`)"
        contentType: application/json
        payload: {type: array, items: {type: array, minItems: 3, maxItems: 3}}
      blob: {summary: "the delivery's entries, concatenated", contentType: application/octet-stream, payload: {type: string, format: binary}}
      gap:
        summary: "with `gaps=true`: entries were trimmed past the cursor (delivery goes on from the oldest kept)"
        contentType: application/json
        payload:
          type: object
          required: [gap]
          properties:
            gap: {type: object, required: [sid, after, oldest], properties: {sid: {type: string}, after: {type: string}, oldest: {type: string}}}
    receive:
      ack: {summary: "with `ack=true`: any message, asking for the next delivery", payload: {}}
    """
    await serve_socket(ws, lambda ws: _pull(ws, send))


async def _pull(ws: WebSocket, send) -> None:
    options = _pull_options(ws.query_params)
    sids = unique_stream_ids(ws.path_params["sid"])  # a malformed stream id is malformed data, not an option
    require(ws, "read", sids)
    cursors = parse_cursors(options["last_entry_id"], len(sids))
    sync = _sync_index(options["time_sync_id"], sids)
    # `$` is fixed now, once (before the socket is accepted): nothing pushed after this moment is skipped
    acked = asyncio.Event()
    async with ws.app.state.hub.open(sids, cursors, options["count"], options["gaps"]) as subscription:
        await ws.accept()
        listener = asyncio.get_running_loop().create_task(_listen(ws, subscription, acked))
        try:
            await _deliver(ws, send, subscription, options, sync, acked)
        finally:
            listener.cancel()


pull = Endpoint(_pull_session, "pull")


async def _listen(ws: WebSocket, subscription, acked: asyncio.Event) -> None:
    """Read the client's messages: acks, and the disconnect that ends the pull."""
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            acked.set()
    except (RuntimeError, OSError, WebSocketDisconnect):
        pass
    finally:
        subscription.close()
        acked.set()


async def _deliver(ws: WebSocket, send, subscription, options, sync, acked: asyncio.Event) -> None:
    binary_header = options["codec"] == "msgpack"
    tally = socket_tally(ws)
    confirm = False
    # frames encoded once and written to the transport as they are, when the server offers it
    sink = ws.scope.get("extensions", {}).get(FRAMES)
    if (sink is not None and len(subscription.sids) == 1 and not options["ack"] and not options["latest"]
            and options["timeout"] is None and sync is None):
        # the follower itself writes to this socket while it waits for entries (`fanout`)
        subscription.direct = fanout.Direct(sink, options["codec"], options["count"], tally)
    while True:
        # after an ack the client asked for more: a stream deleted meanwhile is checked for in Redis
        delivery = await subscription.next(options["count"], latest=options["latest"], timeout=options["timeout"],
                                           confirm=confirm)
        if delivery is None:
            if subscription.timed_out:
                await close_socket(ws, errors.NORMAL, "timeout without data")
            return
        acked.clear()
        for gap in delivery.gaps:
            await send({"type": "websocket.send", "text": orjson.dumps(gap).decode()})
        if delivery.entries:
            # a full transport is waited for here: a catching-up socket (deliveries past the high-water
            # mark) is written its frame bytes all the same, not framed again by the ASGI send
            if sink is not None and (sink.ready() or await sink.drained()):
                framed, size = fanout.frames(delivery, options["codec"])
                sink.write(framed)
            else:  # (the socket is closing: the ASGI send says so)
                header, blob = fanout.wire(delivery, options["codec"])
                await send({"type": "websocket.send", "bytes": header} if binary_header
                           else {"type": "websocket.send", "text": header})
                await send({"type": "websocket.send", "bytes": blob})
                size = len(blob)
            tally(len(delivery.entries), size)
        if sync is not None:
            subscription.sync_to(sync)
        if options["ack"]:
            await acked.wait()
            if subscription.closed:
                return
            confirm = True

