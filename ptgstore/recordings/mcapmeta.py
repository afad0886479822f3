"""The channel metadata of MCAP files (what a recording kept of each stream: its metadata, its
retention), read from their summaries. The mcap package reads a summary whole: it is read only
when the file's footer says it is small (a recording's is a few KiB; an upload may claim anything)."""
from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Iterable

from mcap.exceptions import McapError
from mcap.opcode import Opcode
from mcap.reader import make_reader

from .mcapread import MAGIC

MAX_SUMMARY = 4 * 1024 * 1024  # bytes of summary read at most per file


def summary_size(path: Path) -> int | None:
    """The bytes of a file's summary section from its footer (None: no summary, or not MCAP): to
    read a summary with the mcap package (which reads it whole) only when it is small."""
    with open(path, "rb") as stream:
        stream.seek(0, io.SEEK_END)
        end = stream.tell()
        if end < len(MAGIC) * 2 + 29:
            return None
        stream.seek(end - len(MAGIC) - 29)
        footer = stream.read(29 + len(MAGIC))
    if footer[0] != Opcode.FOOTER or footer[29:] != MAGIC:
        return None
    summary_start = struct.unpack_from("<Q", footer, 9)[0]
    return end - len(MAGIC) - 29 - summary_start if 0 < summary_start <= end - len(MAGIC) - 29 else None


def channel_metadata(files: Iterable[Path]) -> dict[str, dict[str, str]]:
    """Each topic's channel metadata, the last file's (the newest) winning; files without a summary,
    or with one over MAX_SUMMARY, add nothing."""
    out: dict[str, dict[str, str]] = {}
    for path in files:
        try:
            size = summary_size(path)
            if size is None or size > MAX_SUMMARY:
                continue
            with open(path, "rb") as stream:
                summary = make_reader(stream).get_summary()
        except (McapError, ValueError, EOFError, OSError):
            continue  # an uploaded file whose summary cannot be read: nothing from it
        for channel in (summary.channels.values() if summary is not None else ()):
            out[channel.topic] = dict(channel.metadata)
    return out
