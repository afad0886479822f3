"""Receiving an uploaded file: the one file part of a multipart request body, streamed to a new private
temporary file as it arrives (never held in memory, never shared with another upload); and checking
that an uploaded `.mcap` file is MCAP this server reads back within its limits."""
from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from ..errors import BadOption
from ..private import private_dir
from .mcapread import FileReader, Limits, RecordTooLarge, off_loop

WRITE_EVERY = 1024 * 1024  # bytes gathered before they are written (in a thread)
MAX_HEADERS = 16 * 1024  # bytes of one part's headers
MAX_FIELDS = 64 * 1024  # bytes of every part that is not the file
MAX_PARTS = 10
TEMP_PREFIX = ".upload-"
TEMP_SUFFIX = ".tmp"


class _Parts:
    """The parser's callbacks: the file part's data gathered for writing, everything else bounded."""

    def __init__(self) -> None:
        self.parts = 0
        self.files = 0
        self.header = b""
        self.headers: dict[bytes, bytes] = {}
        self.field = b""
        self.header_bytes = 0
        self.other_bytes = 0
        self.in_file = False
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.problem: str | None = None
        self.ended = False

    def _refuse(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem

    def on_part_begin(self) -> None:
        self.parts += 1
        self.headers, self.field, self.header, self.header_bytes, self.in_file = {}, b"", b"", 0, False
        if self.parts > MAX_PARTS:
            self._refuse(f"more than {MAX_PARTS} parts")

    def _count_header(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > MAX_HEADERS:
            self._refuse(f"a part's headers are longer than {MAX_HEADERS} bytes")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        if self.problem is None:
            self.field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        if self.problem is None:
            self.header += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.field.lower()] = self.header
        self.field, self.header = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if b"filename" in options:
            self.files += 1
            if self.files > 1:
                self._refuse("upload one file part")
            self.in_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.problem is not None:
            return
        if self.in_file:
            self.pending.append(data[start:end])
            self.pending_bytes += end - start
        else:
            self.other_bytes += end - start
            if self.other_bytes > MAX_FIELDS:
                self._refuse(f"the parts besides the file hold more than {MAX_FIELDS} bytes")

    def on_part_end(self) -> None:
        self.in_file = False

    def on_end(self) -> None:
        self.ended = True

    def take(self) -> bytes:
        data = b"".join(self.pending)
        self.pending, self.pending_bytes = [], 0
        return data


async def receive_file(request: Request, directory: Path) -> Path:
    """The request's one file part, in a new temporary file (mode 0600) in `directory` (the caller renames
    or deletes it). A body that is not multipart with exactly one file part is a BadOption (400); the
    body's size limit is the BodyLimitMiddleware's (413)."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data") or not boundary:
        raise BadOption("upload the file as multipart/form-data, one file part")
    await asyncio.to_thread(private_dir, directory)
    fd, name = await asyncio.to_thread(tempfile.mkstemp, TEMP_SUFFIX, TEMP_PREFIX, str(directory))
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            parts = _Parts()
            parser = MultipartParser(boundary, {  # type: ignore[arg-type]
                name: getattr(parts, name) for name in ("on_part_begin", "on_header_field", "on_header_value",
                                                        "on_header_end", "on_headers_finished", "on_part_data", "on_part_end",
                                                        "on_end")})
            async for chunk in request.stream():
                parser.write(chunk)
                if parts.problem is not None:
                    raise BadOption(parts.problem)
                if parts.pending_bytes >= WRITE_EVERY:
                    await asyncio.to_thread(out.write, parts.take())
            parser.finalize()
            if not parts.ended:
                raise BadOption("the multipart body ends before its closing boundary")
            if parts.files != 1:
                raise BadOption("upload one file part")
            await asyncio.to_thread(out.write, parts.take())
            await asyncio.to_thread(out.flush)
            await asyncio.to_thread(os.fsync, out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return path


async def mcap_problem(path: Path, limits: Limits) -> tuple[int, str] | None:
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
