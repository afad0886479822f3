"""`/data/{sid}` over HTTP: multipart upload in, concatenated entries out."""
from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..framing import (
    NOW, ascii_json, pack_entries, parse_count, parse_cursors, unique_stream_ids, writable_stream_id,
)
from . import require


async def post_entries(request: Request) -> JSONResponse:
    """Every file part of a multipart body is one entry, in order; `*` routes parts by filename."""
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
    """Entries of one or more streams as one body, located by the `entry-offset` header."""
    sids = unique_stream_ids(request.path_params["sid"])
    require(request, "read", sids)
    params = request.query_params
    cursors = parse_cursors(params.get("last_entry_id", "*"), len(sids))
    count = parse_count(params.get("count"))
    requests = [(sid, cursor, count) for sid, cursor in zip(sids, cursors) if cursor != NOW]
    entries = await request.app.state.store.read(requests) if requests else []
    header, blob = pack_entries(entries)
    request.app.state.metrics.entries(request, False, len(entries), len(blob))
    return Response(blob, media_type="application/octet-stream",
                    headers={"entry-offset": ascii_json(header)})
