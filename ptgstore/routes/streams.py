"""`/streams`: list, inspect, describe and delete streams."""
from __future__ import annotations

import asyncio

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..framing import split_writable_stream_ids, validate_stream_id, writable_stream_id
from . import permissions, query_bool, require


async def list_streams(request: Request) -> JSONResponse:
    """Sorted ids of the streams the caller may read, or their info objects with `info=true`."""
    store = request.app.state.store
    readable = permissions(request).can_read
    sids = [sid for sid in await store.stream_ids() if readable(sid)]
    if not query_bool(request.query_params, "info"):
        return JSONResponse(sids)
    infos = await asyncio.gather(*(store.info(sid) for sid in sids))
    return JSONResponse([info for info in infos if info is not None])


async def get_stream(request: Request) -> JSONResponse:
    """One stream's info object; an unknown stream is 200 with `error`, or 400 with `report_error=true`."""
    sid = validate_stream_id(request.path_params["sid"])
    require(request, "read", [sid])
    report_error = query_bool(request.query_params, "report_error")
    info = await request.app.state.store.info(sid)
    if info is None:
        reason = f"stream {sid!r} does not exist"
        if report_error:
            raise HTTPException(400, reason)
        return JSONResponse({"sid": sid, "error": reason})
    return JSONResponse(info)


async def put_stream(request: Request) -> JSONResponse:
    """Merge the JSON body into the stream's metadata (`override=true` replaces it); admin only."""
    sid = writable_stream_id(request.path_params["sid"])
    require(request, "admin", action="set metadata or max_len")
    override = query_bool(request.query_params, "override")
    body = await request.body()
    if not body.strip():
        raise HTTPException(400, "the body is empty: send the metadata as a JSON object (`{}` for none)")
    try:
        meta = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPException(400, f"metadata must be a JSON object: {exc}") from None
    if not isinstance(meta, dict):
        raise HTTPException(400, f"metadata must be a JSON object, not {_json_kind(meta)}")
    return JSONResponse(await request.app.state.store.set_meta(sid, meta, override=override))


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    kinds: dict[type, str] = {list: "an array", str: "a string"}
    return kinds.get(type(value), "a number")


async def delete_streams(request: Request) -> JSONResponse:
    """Delete one stream or several (`a+b`), entries and metadata; answers which existed. Admin only."""
    sids = list(dict.fromkeys(split_writable_stream_ids(request.path_params["sid"])))
    require(request, "admin", action="delete streams")
    deleted = await request.app.state.store.delete(sids)
    return JSONResponse({"deleted": deleted})
