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
    """Sorted stream ids: streams holding entries and streams created by PUT before any data.

    ---
    query:
      info: {flag: false, description: "info objects (as `GET /streams/{sid}`) instead of ids"}
    raises: [BadOption, StoreError, StoreUnavailable]
    responses:
      200:
        description: the ids, or with `info=true` the info objects
        content:
          application/json:
            schema:
              type: array
              items:
                oneOf: [{type: string}, {$ref: "#/components/schemas/StreamInfo"}]
    """
    store = request.app.state.store
    readable = permissions(request).can_read
    sids = [sid for sid in await store.stream_ids() if readable(sid)]
    if not query_bool(request.query_params, "info"):
        return JSONResponse(sids)
    infos = await asyncio.gather(*(store.info(sid) for sid in sids))
    return JSONResponse([info for info in infos if info is not None])


async def get_stream(request: Request) -> JSONResponse:
    """One stream's info object: metadata, length, first and last entry ids and times.

    An unknown stream is a 200 with an `error` field (as the original server), or a 400 with
    `report_error=true`.
    ---
    query:
      report_error: {flag: false, description: an unknown stream is a 400 (not a 200 with `error`)}
    raises: [BadOption, FramingError, StoreError, StoreUnavailable]
    responses:
      200:
        description: the info object, or `{"sid", "error"}` for an unknown stream
        content:
          application/json:
            schema:
              oneOf:
                - $ref: "#/components/schemas/StreamInfo"
                - {type: object, required: [sid, error], properties: {sid: {type: string}, error: {type: string}}}
        links:
          read: {operationId: data.get_entries, parameters: {sid: $request.path.sid}}
      400: an unknown stream with `report_error=true`
    """
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
    """Merge the JSON body into the stream's metadata (`override=true` replaces it); creates the stream.

    The key `max_len` (a positive integer) sets how many entries the stream keeps (approximately).
    ---
    query:
      override: {flag: false, description: replace the metadata instead of merging into it}
    requestBody:
      required: true
      description: the metadata, a JSON object (`{}` for none)
      content:
        application/json:
          schema: {type: object, properties: {max_len: {type: integer, minimum: 1, maximum: 1000000000000}}}
    raises: [BadOption, FramingError, StoreError, StoreUnavailable]
    responses:
      200:
        description: the stored metadata
        content: {application/json: {schema: {type: object}}}
        links:
          info: {operationId: streams.get_stream, parameters: {sid: $request.path.sid}}
          read: {operationId: data.get_entries, parameters: {sid: $request.path.sid}}
          upload: {operationId: data.post_entries, parameters: {sid: $request.path.sid}}
          delete: {operationId: streams.delete_streams, parameters: {sid: $request.path.sid}}
      400: an empty body, a body that is not a JSON object, or a `max_len` that is not a positive integer
    """
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
    """Delete one stream or several (`a+b`), entries and metadata; answers which existed.

    From the answer on, no pull through any ptgstore process on the same Redis delivers a deleted
    entry.
    ---
    path:
      sid: StreamIds
    raises: [FramingError, StoreError, StoreUnavailable]
    responses:
      200:
        description: the ids that existed
        content:
          application/json:
            schema: {type: object, required: [deleted], properties: {deleted: {type: array, items: {type: string}}}}
    """
    sids = list(dict.fromkeys(split_writable_stream_ids(request.path_params["sid"])))
    require(request, "admin", action="delete streams")
    deleted = await request.app.state.store.delete(sids)
    return JSONResponse({"deleted": deleted})
