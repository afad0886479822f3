"""`/data/{sid}` over HTTP: multipart upload in, concatenated entries out."""
from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..framing import (
    NOW, ascii_json, pack_entries, parse_count, parse_cursors, unique_stream_ids, writable_stream_id,
)
from . import option, require


async def post_entries(request: Request) -> JSONResponse:
    """Upload entries: every file part of a multipart body is one entry, in order.

    Whatever a part's field name, its bytes are one entry. With the path's stream id `*` each part's
    filename is its stream id. Stored all or nothing (on a Redis Cluster the parts must stay in one
    group).
    ---
    path:
      sid: {type: string, oneOf: [{$ref: "#/components/schemas/StreamId"}, {type: string, enum: ["*"]}],
            description: "the stream, or `*`: each part's filename names its stream"}
    requestBody:
      required: true
      description: at least one file part
      content:
        multipart/form-data:
          schema:
            type: object
            required: [entries]
            properties:
              entries: {type: array, minItems: 1, items: {type: string, format: binary}}
    raises: [FramingError, FormParserError, StoreError, StoreUnavailable]
    responses:
      200:
        description: the new entry ids, in the order of the parts
        content: {application/json: {schema: {type: array, items: {$ref: "#/components/schemas/EntryId"}}}}
      400: a body that is not multipart/form-data, or holds no file part
    """
    path_sid = request.path_params["sid"]
    target = None if path_sid == "*" else writable_stream_id(path_sid)
    scope = require(request, "write", [target] if target is not None else [])
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(400, "upload entries as multipart/form-data, one file part per entry")
    entries = []
    async with request.form(max_files=100_000, max_fields=1000) as form:
        for _, part in form.multi_items():
            if not isinstance(part, UploadFile):
                continue
            sid = target if target is not None else writable_stream_id(part.filename or "")
            entries.append((sid, "*", await part.read()))
    if not entries:
        raise HTTPException(400, "no file parts in the upload")
    if target is None:
        scope.require("write", {sid for sid, _, _ in entries})  # before anything is stored
    ids = await request.app.state.store.add(entries)
    request.app.state.metrics.entries(request, True, len(ids), sum(len(data) for _, _, data in entries))
    return JSONResponse(ids)


async def get_entries(request: Request) -> Response:
    """Entries of one or more streams as one body, located by the `entry-offset` header.

    The header is `[[sid, entry_id, start_offset], ...]` (JSON in ASCII): entry *i* is
    `body[start_i : start_i+1]`, the last one runs to the end of the body.
    ---
    path:
      sid: StreamIds
    query:
      last_entry_id: {$ref: "#/components/schemas/Cursor"}
      count: {$ref: "#/components/schemas/Count"}
    raises: [FramingError, StoreError, StoreUnavailable]
    responses:
      200:
        description: the entries' bytes, concatenated
        headers:
          entry-offset:
            required: true
            description: "`[[sid, entry_id, start_offset], ...]` as ASCII JSON"
            schema: {type: string}
        content: {application/octet-stream: {schema: {type: string, format: binary}}}
    """
    sids = unique_stream_ids(request.path_params["sid"])
    require(request, "read", sids)
    params = request.query_params
    cursors = parse_cursors(option(params, "last_entry_id", "*"), len(sids))
    count = parse_count(option(params, "count"))
    requests = [(sid, cursor, count) for sid, cursor in zip(sids, cursors) if cursor != NOW]
    entries = await request.app.state.store.read(requests) if requests else []
    header, blob = pack_entries(entries)
    request.app.state.metrics.entries(request, False, len(entries), len(blob))
    return Response(blob, media_type="application/octet-stream",
                    headers={"entry-offset": ascii_json(header)})
