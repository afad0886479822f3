"""`/recordings`: start and stop recording, list, inspect, rename, hide, delete, download and
upload recordings (replay over a WebSocket: `recording_replay.py`).

Every route that reads or writes the recordings directory is refused (409 with the reason) on a
process whose directory is not the deployment's (`recordings_dir.py`): it would show or write a
part of the recordings only. Stop and the active recording's id are in Redis: any process answers."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator

from starlette.exceptions import HTTPException
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse

from .. import errors
from ..catalogue import HIDDEN_FILE, INFO_FILE, build_info, finished_info, recording_names
from ..framing import FramingError, split_stream_ids
from ..mcapfiles import SEGMENT_SUFFIX
from ..mcapread import FileReader, Limits, RecordTooLarge, off_loop
from ..private import FILE_MODE, private_dir
from ..uploads import receive_file
from ..recording_store import RecordingStore
from ..store import StoreError
from . import option, permissions, query_bool, require

log = logging.getLogger("ptgstore.recordings")

MAX_ID_BYTES = 200
RESERVED_IDS = frozenset({"current", "start", "stop", "static", "upload", "replay", "cache"})
STOP_WAIT = 60.0  # seconds PUT /recordings/stop waits for the recorder to finish the files
UPLOAD_PREFIX = "/recordings/upload/"
UPLOADS_DIR = ".uploads"  # under the recordings directory: uploads being received (same file system)
# a recording's files are data, never a page: no type sniffing, no script, no same-origin rights
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


class RecordingSegment(StringConvertor):
    """`{rec_id:recording}`: a path segment that is not one of the reserved words, which are routes
    of their own (`GET /recordings/start` is that route's 405, not a recording named `start`)."""

    regex = "(?!(?:" + "|".join(sorted(RESERVED_IDS)) + ")(?:/|$))[^/]+"


register_url_convertor("recording", RecordingSegment())


def validate_recording_id(name: str, what: str = "recording id") -> str:
    """`name` when it can name a recording (a directory) or one of its files, else a 400 saying why."""
    if not name:
        raise HTTPException(400, f"empty {what}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise HTTPException(400, f"{what} longer than {MAX_ID_BYTES} bytes")
    if "/" in name or "\\" in name:
        raise HTTPException(400, f"{what} {name!r} contains a '/' or '\\'")
    if name.startswith("."):
        raise HTTPException(400, f"{what} {name!r} starts with '.'")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise HTTPException(400, f"{what} contains a control character")
    if what == "recording id" and name in RESERVED_IDS:
        raise HTTPException(400, f"{name!r} is reserved and cannot name a recording")
    return name


def _states(request) -> RecordingStore:
    return request.app.state.recorder.states


def refuse_unproven(app) -> None:
    """409 with the reason when this process's recordings directory is not the deployment's."""
    problem = app.state.recorder.problem
    if problem is not None:
        raise HTTPException(409, f"recordings are refused on this process: {problem}")


def _root(request) -> Path:
    refuse_unproven(request.app)
    return request.app.state.recorder.root


def _dir(request, rec_id: str) -> Path:
    return _root(request) / validate_recording_id(rec_id)


def _limits(app) -> Limits:
    return Limits.of(app.state.settings)


async def recording_info(app, rec_id: str) -> dict | None:
    """The info object of a recording (active or finished), or None when there is none."""
    refuse_unproven(app)
    recorder = app.state.recorder
    rec_dir = recorder.root / rec_id
    state = await recorder.states.state()
    if state is not None and state["id"] == rec_id:
        _, stats, gaps, _ = await recorder.states.progress()
        writers = await recorder.states.writers()
        return await asyncio.to_thread(build_info, rec_id, rec_dir, stats, gaps, active=True,
                                       status=state.get("status"), started=state.get("started"),
                                       streams_requested=state["streams"], writers=writers)
    if not rec_dir.is_dir():
        return None
    return await off_loop(finished_info, rec_id, rec_dir, await recorder.states.error_of(rec_id), _limits(app))


def recorded_streams(info: dict) -> list[str] | None:
    """The streams a recording holds (None: an active recording of every stream, future ones too)."""
    if info.get("active") and info.get("streams_requested") is None:
        return None
    return list(info.get("streams") or {}) + list(info.get("streams_requested") or [])


def require_readable(conn, info: dict) -> None:
    """Reading a recording (its info, files or a replay) needs read on every stream in it, or admin."""
    if not permissions(conn).admin:
        require(conn, "read", recorded_streams(info))


async def list_recordings(request: Request) -> JSONResponse:
    """Sorted recording ids (hidden ones too with `hidden=true`), or their info objects with `info=true`.

    ---
    query:
      info: {flag: false, description: info objects instead of ids}
      hidden: {flag: false, description: hidden recordings too}
    raises: [BadOption, StoreUnavailable]
    responses:
      200:
        description: the ids, or the info objects
        content:
          application/json:
            schema: {type: array, items: {oneOf: [{type: string}, {$ref: "#/components/schemas/RecordingInfo"}]}}
    """
    names = await asyncio.to_thread(recording_names, _root(request), query_bool(request.query_params, "hidden"))
    admin = permissions(request).admin
    if admin and not query_bool(request.query_params, "info"):
        return JSONResponse(names)
    infos = [info for info in [await recording_info(request.app, name) for name in names]
             if info is not None and (admin or _readable(request, info))]
    if not query_bool(request.query_params, "info"):
        return JSONResponse([info["name"] for info in infos])
    return JSONResponse(infos)


def _readable(conn, info: dict) -> bool:
    try:
        require_readable(conn, info)
    except errors.Forbidden:
        return False
    return True


async def current(request: Request) -> JSONResponse:
    """The active recording's id (null when none), or its info object with `info=true`.

    ---
    query:
      info: {flag: false, description: the info object instead of the id}
    raises: [BadOption, StoreUnavailable]
    responses:
      200:
        description: the id, its info object, or null
        content:
          application/json:
            schema: {nullable: true, oneOf: [{type: string}, {$ref: "#/components/schemas/RecordingInfo"}]}
    """
    info = query_bool(request.query_params, "info")
    rec_id = await _states(request).active_id()
    if rec_id is None:
        return JSONResponse(None)
    found = await recording_info(request.app, rec_id)
    if found is not None:
        require_readable(request, found)
    return JSONResponse(found if info else rec_id)


async def get_recording(request: Request) -> JSONResponse:
    """A recording's info object (an active one's counts cover the segments finished so far).

    ---
    raises: [StoreUnavailable]
    responses:
      200:
        description: the info object
        content: {application/json: {schema: {$ref: "#/components/schemas/RecordingInfo"}}}
      400: a malformed recording id
      405: "a reserved word as the id (`stop`): the path is then that route's, which does not take this method"
      404: no such recording
    """
    rec_id = validate_recording_id(request.path_params["rec_id"])
    info = await recording_info(request.app, rec_id)
    if info is None:
        raise HTTPException(404, f"no recording {rec_id!r}")
    require_readable(request, info)
    return JSONResponse(info)


def _new_id(root: Path) -> str:
    base = datetime.now().strftime("%Y.%m.%d-%H.%M.%S")
    name, n = base, 1
    while (root / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


async def start(request: Request) -> JSONResponse:
    """Start recording every stream (or `sid=a+b`); answers the recording id.

    Start and stop are announced on the stream `event:recording:id`.
    ---
    query:
      rec_id: {$ref: "#/components/schemas/RecordingId", description: "the recording's id (default: the local start time, `YYYY.MM.DD-HH.MM.SS`)"}
      sid: {$ref: "#/components/schemas/StreamList", description: "the streams to record, `a+b` (default: every stream, including streams that appear during the recording)"}
    raises: [StoreUnavailable]
    responses:
      200:
        description: the recording id
        content: {application/json: {schema: {$ref: "#/components/schemas/RecordingId"}}}
        links:
          stop: {operationId: recordings.stop}
          info: {operationId: recordings.get_recording, parameters: {rec_id: $response.body}}
          hide: {operationId: recordings.hide, parameters: {rec_id: $response.body}}
      400: a malformed recording id or stream id
      409: a recording is active, or the id exists
    """
    params = request.query_params
    root = _root(request)
    rec_id = option(params, "rec_id")
    if rec_id is None:
        rec_id = await asyncio.to_thread(_new_id, root)
    rec_dir = _dir(request, rec_id)
    streams = None
    if option(params, "sid") is not None:
        try:
            streams = list(dict.fromkeys(split_stream_ids(params["sid"].replace(" ", "+"))))
        except FramingError as exc:
            raise HTTPException(400, str(exc)) from None
    require(request, "read", streams)  # recording is reading: every stream when none is named
    if rec_dir.exists():
        raise HTTPException(409, f"recording {rec_id!r} already exists")
    try:
        await _states(request).start(rec_id, streams, request.app.state.settings.recording_shards)
    except StoreError as exc:
        raise HTTPException(400 if "not a stream" in str(exc) else 409, str(exc)) from None
    try:
        await asyncio.to_thread(private_dir, rec_dir)
    except OSError as exc:
        log.error("recording %s: cannot create %s: %s", rec_id, rec_dir, exc)
    log.info("recording %s started (%s)", rec_id, "+".join(streams) if streams else "every stream")
    return JSONResponse(rec_id)


async def stop(request: Request) -> JSONResponse:
    """Stop the active recording; `1` once its files are written (waits up to 60 s), `0` when none was active.

    ---
    raises: [StoreUnavailable]
    responses:
      200:
        description: 1 or 0
        content: {application/json: {schema: {type: integer, enum: [0, 1]}}}
        links:
          list: {operationId: recordings.list_recordings}
    """
    states = _states(request)
    state = await states.state()
    if state is not None and not permissions(request).admin:
        require(request, "read", state["streams"])
    rec_id = await states.stop()
    if rec_id is None:
        return JSONResponse(0)
    deadline = time.monotonic() + STOP_WAIT
    while await states.active_id() == rec_id and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    log.info("recording %s stopped", rec_id)
    return JSONResponse(1)


async def _refuse_active(request, rec_id: str) -> None:
    if await _states(request).active_id() == rec_id:
        raise HTTPException(409, f"recording {rec_id!r} is active: stop it first")


async def rename(request: Request) -> JSONResponse:
    """Rename a recording; answers `[true, true]`.

    ---
    raises: [StoreUnavailable]
    responses:
      200: {description: "`[true, true]`", content: {application/json: {schema: {type: array, items: {type: boolean}}}}}
      400: a malformed recording id
      405: "a reserved word as the id (`stop`): the path is then that route's, which does not take this method"
      404: no such recording
      409: "`new_id` exists, or the recording is active"
    """
    require(request, "admin", action="manage recordings")
    rec_id = validate_recording_id(request.path_params["rec_id"])
    new_id = validate_recording_id(request.path_params["new_id"])
    old_dir, new_dir = _dir(request, rec_id), _dir(request, new_id)
    await _refuse_active(request, rec_id)
    if not old_dir.is_dir():
        raise HTTPException(404, f"no recording {rec_id!r}")
    if new_dir.exists():
        raise HTTPException(409, f"recording {new_id!r} already exists")
    await asyncio.to_thread(os.rename, old_dir, new_dir)
    await _states(request).forget_error(rec_id, new_id)
    return JSONResponse([new_dir.is_dir(), not old_dir.exists()])


async def delete_recording(request: Request) -> JSONResponse:
    """Delete a recording's files; answers `[true, true]`.

    ---
    raises: [StoreUnavailable]
    responses:
      200: {description: "`[true, true]`", content: {application/json: {schema: {type: array, items: {type: boolean}}}}}
      400: a malformed recording id
      405: "a reserved word as the id (`stop`): the path is then that route's, which does not take this method"
      404: no such recording
      409: the recording is active
    """
    require(request, "admin", action="manage recordings")
    rec_id = validate_recording_id(request.path_params["rec_id"])
    rec_dir = _dir(request, rec_id)
    await _refuse_active(request, rec_id)
    if not rec_dir.is_dir():
        raise HTTPException(404, f"no recording {rec_id!r}")
    await asyncio.to_thread(shutil.rmtree, rec_dir)
    await _states(request).forget_error(rec_id)
    return JSONResponse([not rec_dir.exists(), True])


async def clear_cache(request: Request) -> JSONResponse:
    """The original server's info cache: info objects are kept beside each recording, nothing to clear.

    ---
    responses:
      200: {description: "`{}`", content: {application/json: {schema: {type: object, maxProperties: 0}}}}
    """
    require(request, "admin", action="manage recordings")
    return JSONResponse({})


async def _set_hidden(request: Request, hidden: bool) -> JSONResponse:
    require(request, "admin", action="manage recordings")
    rec_dir = _dir(request, request.path_params["rec_id"])
    if not rec_dir.is_dir():
        raise HTTPException(404, f"no recording {rec_dir.name!r}")
    marker = rec_dir / HIDDEN_FILE
    if hidden:
        await asyncio.to_thread(marker.touch, FILE_MODE)
    else:
        await asyncio.to_thread(marker.unlink, True)
    return JSONResponse(True)


async def hide(request: Request) -> JSONResponse:
    """Leave a recording out of `GET /recordings` (still reachable by its id); answers `true`.

    ---
    responses:
      200: {description: "`true`", content: {application/json: {schema: {type: boolean}}}}
      400: a malformed recording id
      405: "a reserved word as the id (`stop`): the path is then that route's, which does not take this method"
      404: no such recording
    """
    return await _set_hidden(request, True)


async def unhide(request: Request) -> JSONResponse:
    """Put a hidden recording back into `GET /recordings`; answers `true`.

    ---
    responses:
      200: {description: "`true`", content: {application/json: {schema: {type: boolean}}}}
      400: a malformed recording id
      405: "a reserved word as the id (`stop`): the path is then that route's, which does not take this method"
      404: no such recording
    """
    return await _set_hidden(request, False)


async def static_file(request: Request) -> FileResponse:
    """A file of a recording: a segment `part-NNNNNN.mcap`, `info.json`, or an uploaded file.

    Always as data to download (`application/octet-stream`, never a type guessed from its name),
    sandboxed.
    ---
    responses:
      200: {description: the file, content: {application/octet-stream: {schema: {type: string, format: binary}}}}
      400: a malformed recording id or file name
      404: no such file
    """
    rec_dir = _dir(request, request.path_params["rec_id"])
    name = validate_recording_id(request.path_params["name"], "file name")
    if not permissions(request).admin:  # (an admin's download does not wait for the recording's info)
        info = await recording_info(request.app, rec_dir.name)
        if info is None:
            raise HTTPException(404, f"no recording {rec_dir.name!r}")
        require_readable(request, info)
    path = rec_dir / name
    if name.endswith(".tmp") or not path.is_file():
        raise HTTPException(404, f"no file {name!r} in recording {rec_dir.name!r}")
    # saved under the recording's name (a browser would name every segment `part-...mcap`)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{rec_dir.name}-{name}",
                        headers=FILE_HEADERS)


async def upload(request: Request) -> JSONResponse:
    """Add a file to a recording (created when new); an `.mcap` file must be a readable MCAP file within the limits.

    An `.mcap` file becomes part of the recording (replayable). The body streams to a temporary file
    of its own (bounded by PTGSTORE_MAX_UPLOAD).
    ---
    query:
      overwrite: {flag: false, description: replace a file of the same name}
    requestBody:
      required: true
      description: one file part
      content:
        multipart/form-data:
          schema: {type: object, required: [file], properties: {file: {type: string, format: binary}}}
    raises: [BadOption, FormParserError, RecordTooLarge, UnreadableRecording, StoreUnavailable]
    responses:
      200:
        description: what was stored
        content:
          application/json:
            schema:
              type: object
              required: [recording, file, size]
              properties: {recording: {type: string}, file: {type: string}, size: {type: integer}}
      400: "a malformed recording id or file name, a name that cannot be uploaded (`info.json`, `*.tmp`), not one file part, an `.mcap` file that is not readable MCAP"
      409: the file exists (without `overwrite=true`), or the recording is active
      413: a file over the server's upload limit (PTGSTORE_MAX_UPLOAD)
    """
    require(request, "admin", action="manage recordings")
    rec_id = validate_recording_id(request.path_params["rec_id"])
    name = validate_recording_id(request.path_params["name"], "file name")
    rec_dir = _dir(request, rec_id)
    overwrite = query_bool(request.query_params, "overwrite")
    await _refuse_active(request, rec_id)
    if name.endswith(".tmp") or name == INFO_FILE:
        raise HTTPException(400, f"{name!r} cannot be uploaded")
    path = rec_dir / name
    if path.exists() and not overwrite:
        raise HTTPException(409, f"{name!r} exists in recording {rec_id!r} (overwrite=true replaces it)")
    tmp = await receive_file(request, _root(request) / UPLOADS_DIR)
    try:
        if name.endswith(SEGMENT_SUFFIX):
            problem = await _mcap_problem(tmp, _limits(request.app))
            if problem:
                status, reason = problem
                what = "is over this server's limits" if status == 413 else "is not a readable MCAP file"
                raise HTTPException(status, f"{name!r} {what}: {reason}")
        await _refuse_active(request, rec_id)  # (started while the body arrived)
        await asyncio.to_thread(private_dir, rec_dir)
        if not await asyncio.to_thread(_put, tmp, path, overwrite):
            raise HTTPException(409, f"{name!r} exists in recording {rec_id!r} (overwrite=true replaces it)")
    finally:
        await asyncio.to_thread(tmp.unlink, True)
    await asyncio.to_thread((rec_dir / INFO_FILE).unlink, True)  # counted again from the files
    return JSONResponse({"recording": rec_id, "file": name, "size": path.stat().st_size})


def _put(tmp: Path, path: Path, overwrite: bool) -> bool:
    """Give the received file its name; False when one exists and may not be replaced (another upload
    of the same name may have finished meanwhile)."""
    if overwrite:
        os.replace(tmp, path)
        return True
    try:
        os.link(tmp, path)  # fails when `path` exists, unlike a rename
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        if path.exists():
            return False
        os.replace(tmp, path)
    return True


async def _mcap_problem(path: Path, limits: Limits) -> tuple[int, str] | None:
    """(status, reason) when the file is not MCAP this server reads back within its limits, else None.
    Read in steps, so that replays reading on the same thread meanwhile are not held up for long."""
    entries = iter(FileReader(path, limits, oversized="refuse", headers_only=True))
    try:
        while await off_loop(_advance, entries):
            pass
    except RecordTooLarge as exc:
        return 413, str(exc)
    except Exception as exc:  # a damaged file: UnreadableRecording, or whatever else it made go wrong
        return 400, f"{type(exc).__name__}: {exc}"[:200]
    return None


def _advance(entries: Iterator, step: int = 64 * 1024 * 1024) -> bool:
    """Read about `step` bytes of entries; False once there are none left."""
    done = 0
    for _, size in entries:
        done += size + 64
        if done >= step:
            return True
    return False


from .recording_replay import replay  # noqa: E402,F401 - the replay socket's route, served beside these
