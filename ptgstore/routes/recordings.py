"""`/recordings`: start and stop recording, list, inspect, rename, hide, delete, download and
upload recordings (replay over a WebSocket: `recording_replay.py`).

Thin: each route parses its request, checks permissions and calls the recordings catalogue
(`recordings/catalogue.py`), which owns the recordings directory and refuses every route that
reads or writes it on a process whose directory is not the deployment's. Stop and the active
recording's id are in Redis: any process answers."""
from __future__ import annotations

import asyncio

from starlette.convertors import StringConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse

from .. import errors
from ..framing import FramingError, split_stream_ids
from ..recordings.catalogue import RESERVED_IDS, Catalogue, streams_of, validate_name
from ..recordings.mcapfiles import SEGMENT_SUFFIX
from ..recordings.uploads import mcap_problem, receive_file
from . import option, permissions, query_bool, require

UPLOAD_PREFIX = "/recordings/upload/"  # (its own body limit, PTGSTORE_MAX_UPLOAD: app.py)
STOP_WAIT = 60.0  # seconds PUT /recordings/stop waits for the recorder to finish the files
# a recording's files are data, never a page: no type sniffing, no script, no same-origin rights
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


class RecordingSegment(StringConvertor):
    """`{rec_id:recording}`: a path segment that is not one of the reserved words, which are routes
    of their own (`GET /recordings/start` is that route's 405, not a recording named `start`)."""

    regex = "(?!(?:" + "|".join(sorted(RESERVED_IDS)) + ")(?:/|$))[^/]+"


register_url_convertor("recording", RecordingSegment())


def catalogue(conn) -> Catalogue:
    """The recordings of the deployment (`conn`: a request or a socket)."""
    return conn.app.state.recorder.catalogue


def require_readable(conn, info: dict) -> None:
    """Reading a recording (its info, files or a replay) needs read on every stream in it, or admin."""
    if not permissions(conn).admin:
        require(conn, "read", streams_of(info))


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
    recordings = catalogue(request)
    names = await recordings.names(query_bool(request.query_params, "hidden"))
    admin = permissions(request).admin
    if admin and not query_bool(request.query_params, "info"):
        return JSONResponse(names)
    infos = [info for info in [await recordings.info(name) for name in names]
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
    rec_id = await catalogue(request).states.active_id()
    if rec_id is None:
        return JSONResponse(None)
    found = await catalogue(request).info(rec_id)
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
    rec_id = validate_name(request.path_params["rec_id"])
    info = await catalogue(request).info(rec_id)
    if info is None:
        raise HTTPException(404, f"no recording {rec_id!r}")
    require_readable(request, info)
    return JSONResponse(info)


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
    recordings = catalogue(request)
    rec_id = recordings.path(option(params, "rec_id") or await recordings.new_id()).name
    streams = None
    if option(params, "sid") is not None:
        try:
            streams = list(dict.fromkeys(split_stream_ids(params["sid"].replace(" ", "+"))))
        except FramingError as exc:
            raise HTTPException(400, str(exc)) from None
    require(request, "read", streams)  # recording is reading: every stream when none is named
    await recordings.start(rec_id, streams, request.app.state.settings.recording_shards)
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
    recordings = catalogue(request)
    state = await recordings.states.state()
    if state is not None and not permissions(request).admin:
        require(request, "read", state["streams"])
    return JSONResponse(0 if await recordings.stop(STOP_WAIT) is None else 1)


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
    rec_id = validate_name(request.path_params["rec_id"])
    new_id = validate_name(request.path_params["new_id"])
    return JSONResponse(await catalogue(request).rename(rec_id, new_id))


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
    rec_id = validate_name(request.path_params["rec_id"])
    return JSONResponse(await catalogue(request).delete(rec_id))


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
    await catalogue(request).set_hidden(request.path_params["rec_id"], hidden)
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
    recordings = catalogue(request)
    rec_id = recordings.path(request.path_params["rec_id"]).name
    name = validate_name(request.path_params["name"], "file name")
    if not permissions(request).admin:  # (an admin's download does not wait for the recording's info)
        info = await recordings.info(rec_id)
        if info is None:
            raise HTTPException(404, f"no recording {rec_id!r}")
        require_readable(request, info)
    # saved under the recording's name (a browser would name every segment `part-...mcap`)
    return FileResponse(recordings.file(rec_id, name), media_type="application/octet-stream",
                        filename=f"{rec_id}-{name}", headers=FILE_HEADERS)


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
    rec_id = validate_name(request.path_params["rec_id"])
    name = validate_name(request.path_params["name"], "file name")
    recordings = catalogue(request)
    overwrite = query_bool(request.query_params, "overwrite")
    await recordings.can_add(rec_id, name, overwrite)
    tmp = await receive_file(request, recordings.uploads)
    try:
        if name.endswith(SEGMENT_SUFFIX):
            problem = await mcap_problem(tmp, recordings.limits)
            if problem:
                status, reason = problem
                what = "is over this server's limits" if status == 413 else "is not a readable MCAP file"
                raise HTTPException(status, f"{name!r} {what}: {reason}")
        size = await recordings.add(rec_id, name, tmp, overwrite)
    finally:
        await asyncio.to_thread(tmp.unlink, True)
    return JSONResponse({"recording": rec_id, "file": name, "size": size})
