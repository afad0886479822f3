"""`/recordings`: start and stop recording, list, inspect, rename, hide, delete, download and
upload recordings (replay over a WebSocket: `recording_replay.py`).

Every route that reads or writes the recordings directory is refused (409 with the reason) on a
process whose directory is not the deployment's (`recordings_dir.py`): it would show or write a
part of the recordings only. Stop and the active recording's id are in Redis: any process answers."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse

from ..catalogue import HIDDEN_FILE, INFO_FILE, build_info, finished_info, recording_names
from ..framing import FramingError, split_stream_ids
from ..mcapfiles import SEGMENT_SUFFIX, read_messages
from ..recording_store import RecordingStore
from ..store import StoreError
from . import query_bool

log = logging.getLogger("ptgstore.recordings")

MAX_ID_BYTES = 200
RESERVED_IDS = frozenset({"current", "start", "stop", "static", "upload", "replay", "cache"})
STOP_WAIT = 60.0  # seconds PUT /recordings/stop waits for the recorder to finish the files


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
    return await asyncio.to_thread(finished_info, rec_id, rec_dir, await recorder.states.error_of(rec_id))


async def list_recordings(request: Request) -> JSONResponse:
    """Recording names (hidden ones with `hidden=true`), or their info objects with `info=true`."""
    names = await asyncio.to_thread(recording_names, _root(request), query_bool(request.query_params, "hidden"))
    if not query_bool(request.query_params, "info"):
        return JSONResponse(names)
    infos = [await recording_info(request.app, name) for name in names]
    return JSONResponse([info for info in infos if info is not None])


async def current(request: Request) -> JSONResponse:
    """The active recording's id (null when none), or its info object with `info=true`."""
    rec_id = await _states(request).active_id()
    if rec_id is None or not query_bool(request.query_params, "info"):
        return JSONResponse(rec_id)
    return JSONResponse(await recording_info(request.app, rec_id))


async def get_recording(request: Request) -> JSONResponse:
    rec_id = validate_recording_id(request.path_params["rec_id"])
    info = await recording_info(request.app, rec_id)
    if info is None:
        raise HTTPException(404, f"no recording {rec_id!r}")
    return JSONResponse(info)


def _new_id(root: Path) -> str:
    base = datetime.now().strftime("%Y.%m.%d-%H.%M.%S")
    name, n = base, 1
    while (root / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


async def start(request: Request) -> JSONResponse:
    """Start recording (every stream, or `sid=a+b`); answers the recording id."""
    params = request.query_params
    root = _root(request)
    rec_id = params.get("rec_id") or ""
    if not rec_id:
        rec_id = await asyncio.to_thread(_new_id, root)
    rec_dir = _dir(request, rec_id)
    streams = None
    if params.get("sid"):
        try:
            streams = list(dict.fromkeys(split_stream_ids(params["sid"].replace(" ", "+"))))
        except FramingError as exc:
            raise HTTPException(400, str(exc)) from None
    if rec_dir.exists():
        raise HTTPException(409, f"recording {rec_id!r} already exists")
    try:
        await _states(request).start(rec_id, streams, request.app.state.settings.recording_shards)
    except StoreError as exc:
        raise HTTPException(400 if "not a stream" in str(exc) else 409, str(exc)) from None
    try:
        await asyncio.to_thread(rec_dir.mkdir, 0o700, True, True)
    except OSError as exc:
        log.error("recording %s: cannot create %s: %s", rec_id, rec_dir, exc)
    log.info("recording %s started (%s)", rec_id, "+".join(streams) if streams else "every stream")
    return JSONResponse(rec_id)


async def stop(request: Request) -> JSONResponse:
    """Stop the active recording and wait (bounded) for its files; 1 when one was active, else 0."""
    states = _states(request)
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
    rec_id = validate_recording_id(request.path_params["rec_id"])
    rec_dir = _dir(request, rec_id)
    await _refuse_active(request, rec_id)
    if not rec_dir.is_dir():
        raise HTTPException(404, f"no recording {rec_id!r}")
    await asyncio.to_thread(shutil.rmtree, rec_dir)
    await _states(request).forget_error(rec_id)
    return JSONResponse([not rec_dir.exists(), True])


async def clear_cache(_request: Request) -> JSONResponse:
    """The original's info cache: info objects are kept beside each recording, nothing to clear."""
    return JSONResponse({})


async def _set_hidden(request: Request, hidden: bool) -> JSONResponse:
    rec_dir = _dir(request, request.path_params["rec_id"])
    if not rec_dir.is_dir():
        raise HTTPException(404, f"no recording {rec_dir.name!r}")
    marker = rec_dir / HIDDEN_FILE
    if hidden:
        await asyncio.to_thread(marker.touch)
    else:
        await asyncio.to_thread(marker.unlink, True)
    return JSONResponse(True)


async def hide(request: Request) -> JSONResponse:
    """Leave a recording out of `GET /recordings` (still reachable by its id)."""
    return await _set_hidden(request, True)


async def unhide(request: Request) -> JSONResponse:
    return await _set_hidden(request, False)


async def static_file(request: Request) -> FileResponse:
    """A file of a recording: an MCAP segment, `info.json`, or an uploaded export."""
    rec_dir = _dir(request, request.path_params["rec_id"])
    name = validate_recording_id(request.path_params["name"], "file name")
    path = rec_dir / name
    if name.endswith(".tmp") or not path.is_file():
        raise HTTPException(404, f"no file {name!r} in recording {rec_dir.name!r}")
    media = "application/octet-stream" if name.endswith(SEGMENT_SUFFIX) else None
    # saved under the recording's name (a browser would name every segment `part-...mcap`)
    return FileResponse(path, media_type=media, filename=f"{rec_dir.name}-{name}")


async def upload(request: Request) -> JSONResponse:
    """Add a file to a recording (created when new); an `.mcap` file must be a readable MCAP file."""
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
    async with request.form(max_files=1, max_fields=10) as form:
        parts = [part for _, part in form.multi_items() if isinstance(part, UploadFile)]
        if len(parts) != 1:
            raise HTTPException(400, "upload one file part")
        await asyncio.to_thread(rec_dir.mkdir, parents=True, exist_ok=True)
        tmp = rec_dir / f"{name}.upload.tmp"
        await asyncio.to_thread(_save, parts[0].file, tmp)
    if name.endswith(SEGMENT_SUFFIX):
        problem = await asyncio.to_thread(_mcap_problem, tmp)
        if problem:
            await asyncio.to_thread(tmp.unlink, True)
            with contextlib.suppress(OSError):
                rec_dir.rmdir()  # only when it was created for this upload
            raise HTTPException(400, f"{name!r} is not a readable MCAP file: {problem}")
    await asyncio.to_thread(os.replace, tmp, path)
    await asyncio.to_thread((rec_dir / INFO_FILE).unlink, True)  # counted again from the files
    return JSONResponse({"recording": rec_id, "file": name, "size": path.stat().st_size})


def _save(source, target: Path) -> None:
    source.seek(0)
    with open(target, "wb") as out:
        shutil.copyfileobj(source, out, 1024 * 1024)


def _mcap_problem(path: Path) -> str | None:
    try:
        for _ in read_messages([path]):
            pass
    except Exception as exc:  # the reader raises several kinds for a damaged file
        return f"{type(exc).__name__}: {exc}"[:200]
    return None


from .recording_replay import replay  # noqa: E402,F401 - the replay socket's route, served beside these
