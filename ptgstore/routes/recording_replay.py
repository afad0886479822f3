"""`/recordings/replay`: a recording replayed into live streams over a WebSocket, in time order
across its files (whatever shard wrote them), restoring each new stream's metadata and retention."""
from __future__ import annotations

import asyncio
import contextlib

import orjson
from starlette.exceptions import HTTPException
from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import errors
from ..framing import FramingError, split_stream_ids, writable_stream_id
from ..recordings.catalogue import validate_name
from ..recordings.mcapfiles import read_messages
from ..recordings.mcapread import off_loop
from ..recordings.replay import Progress, paced, recorded_streams, restore_streams
from . import close_socket, option, permissions, query_bool, require, serve_socket
from .recordings import catalogue


def _replay_options(params) -> dict:
    interval = option(params, "interval", "1")
    speed = option(params, "speed", "1")
    try:
        interval_s = float(interval)
        speed_x = float(speed)
    except ValueError:
        raise FramingError("interval and speed must be numbers") from None
    if not (0.01 <= interval_s <= 3600) or not (0 < speed_x <= 1000):
        raise FramingError("interval must be 0.01-3600 s and speed 0-1000")
    return {
        "rec_id": option(params, "rec_id", ""),
        "sids": option(params, "sid"),
        "prefix": option(params, "prefix", ""),
        "fullspeed": query_bool(params, "fullspeed"),
        "keep_ids": query_bool(params, "keep_ids"),
        "interval": interval_s,
        "speed": speed_x,
    }


async def replay(ws: WebSocket) -> None:
    """Replay a recording into live streams; progress every `interval` seconds; close 1000 when done.

    The replayed streams are the recorded ones (with `prefix`), stamped now unless `keep_ids=true`.
    ---
    path: {}
    query:
      rec_id: {$ref: "#/components/schemas/RecordingId", required: true, description: the recording to replay}
      sid: {$ref: "#/components/schemas/StreamList", description: "the streams to replay, `a+b` (default: every stream of the recording)"}
      prefix: {type: string, description: "replayed stream = prefix + stream id (default: none)"}
      fullspeed: {flag: false, description: "as fast as possible (default: the recorded intervals between entries)"}
      interval: {type: number, minimum: 0.01, maximum: 3600, default: 1, description: seconds between progress messages}
      speed: {type: number, exclusiveMinimum: 0, maximum: 1000, default: 1, description: a factor of the recorded pace}
      keep_ids: {flag: false, description: "entries keep their recorded ids, into streams that must be empty (default: stamped now)"}
    raises: [BadOption, FramingError, StoreError, StoreUnavailable]
    closes:
      1000: the replay is done (after the last progress message)
      1008: "an unknown recording or stream, a malformed recording id, an active recording, `keep_ids` into a stream holding entries"
    send:
      progress:
        summary: every `interval` seconds, and a last one with `active` empty
        contentType: application/json
        payload:
          type: object
          required: [updates, active, durations, current]
          properties:
            updates: {type: object, description: "stream -> entries since the last message"}
            active: {type: array, items: {type: string}, description: streams still replaying}
            durations: {type: object, description: "stream -> recorded seconds"}
            current: {type: object, description: "stream -> seconds replayed"}
    """
    await ws.accept()
    await serve_socket(ws, _replay)


async def _replay(ws: WebSocket) -> None:
    options = _replay_options(ws.query_params)
    rec_id = validate_name(options["rec_id"])
    recordings = catalogue(ws)
    info = await recordings.info(rec_id)
    if info is None:
        raise HTTPException(404, f"no recording {rec_id!r}")
    if info.get("active"):
        raise HTTPException(409, f"recording {rec_id!r} is active: stop it first")
    stats = info["streams"]
    sids = split_stream_ids(options["sids"].replace(" ", "+")) if options["sids"] else sorted(stats)
    unknown = [sid for sid in sids if sid not in stats]
    if unknown:
        raise HTTPException(404, f"recording {rec_id!r} has no stream {unknown[0]!r}")
    targets = {sid: writable_stream_id(options["prefix"] + sid) for sid in sids}
    if not permissions(ws).admin:
        require(ws, "read", sids)  # a replay reads the recording, as a download does
    require(ws, "write", targets.values())
    store = ws.app.state.store
    if options["keep_ids"]:
        for target in targets.values():
            existing = await store.info(target)
            if existing is not None and existing["length"]:
                raise HTTPException(409, f"keep_ids needs empty streams: {target!r} holds entries")
    progress = Progress(stats, sids)
    files = recordings.segment_files(rec_id)
    await restore_streams(store, targets, await off_loop(recorded_streams, files))
    messages = read_messages(files, sids, recordings.limits)
    progress.skipped = messages.skipped  # entries over PTGSTORE_MAX_MESSAGE, counted as they are met
    speed = None if options["fullspeed"] else options["speed"]
    reporter = asyncio.ensure_future(_report(ws, progress, options["interval"]))
    listener = asyncio.ensure_future(_until_disconnect(ws))
    try:
        async for batch in paced(messages, speed):
            if listener.done():
                return
            await store.add([(targets[m.sid], m.entry_id if options["keep_ids"] else "*", m.data) for m in batch])
            for m in batch:
                progress.sent(m)
            del batch, m  # let go of the entries while the next ones are read
    finally:
        reporter.cancel()
        listener.cancel()
        with contextlib.suppress(BaseException):
            await reporter
    progress.active.clear()
    await ws.send_text(orjson.dumps(progress.report()).decode())
    skipped = sum(messages.skipped.values())
    await close_socket(ws, errors.NORMAL, f"replay done, {skipped} entries over PTGSTORE_MAX_MESSAGE skipped"
                       if skipped else "replay done")


async def _report(ws: WebSocket, progress: Progress, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await ws.send_text(orjson.dumps(progress.report()).decode())


async def _until_disconnect(ws: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass
