"""Recordings as MCAP files: how entries become messages and back. No Redis, no HTTP.

Each stream is a channel whose topic is the stream id. An entry is one message whose
`log_time` and `publish_time` are its entry id's milliseconds in nanoseconds plus the
sequence number (below a million), and whose `sequence` field is the sequence number: the
entry id `<ms>-<seq>` is `log_time // 1_000_000` and `sequence`.

JPEG and PNG entries go on a channel with Foxglove's well-known `foxglove.CompressedImage`
JSON schema (message encoding `json`, the image base64-encoded in `data`), so that the file
opens in Foxglove with the images visible; base64-decoding `data` gives the entry's bytes
exactly. Every other entry goes on a channel with message encoding `application/octet-stream`
(no schema): the message data is the entry's bytes as they are. The channel metadata holds the
stream's metadata (strings as they are, other values as JSON) and `ptgstore.encoding`
(`image` or `raw`).
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Iterable

import orjson
from mcap.writer import CompressionType, Writer

from ..foxglove_schemas import (  # noqa: F401 - entry_times, NS_PER_MS and MAX_SEQUENCE are used through here
    IMAGE_SCHEMA, IMAGE_SCHEMA_NAME, MAX_SEQUENCE, NS_PER_MS, RAW_ENCODING, compressed_image, entry_times, image_format,
)
from ..private import open_private
from . import mcapread
from .mcapread import Limits, Reading

ENCODING_KEY = "ptgstore.encoding"
SEGMENT_SUFFIX = ".mcap"


# the data section's CRC (chunk CRCs are on by default): mcap 1.0 always wrote it, later versions
# write it when asked
_CRC_OPTIONS: dict[str, Any] = {name: True for name in ("enable_crcs", "enable_data_crcs")
                                if name in inspect.signature(Writer.__init__).parameters}


def channel_metadata(meta: dict, encoding: str) -> dict[str, str]:
    out = {str(k): v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in meta.items()}
    out[ENCODING_KEY] = encoding
    return out


class SegmentWriter:
    """One MCAP file being written: `path` while open, renamed by the caller once finished."""

    def __init__(self, path: Path, chunk_size: int = 4 * 1024 * 1024):
        self.path = path
        self.file = open_private(path)
        self.writer = Writer(self.file, chunk_size=chunk_size, compression=CompressionType.ZSTD, **_CRC_OPTIONS)
        self.writer.start(profile="", library="ptgstore")
        self.channels: dict[tuple[str, str], int] = {}
        self.image_schema = 0
        self.messages = 0
        self.bytes = 0

    def _channel(self, sid: str, encoding: str, meta: dict) -> int:
        key = (sid, encoding)
        channel = self.channels.get(key)
        if channel is None:
            if encoding == "image":
                if not self.image_schema:
                    self.image_schema = self.writer.register_schema(IMAGE_SCHEMA_NAME, "jsonschema", IMAGE_SCHEMA)
                channel = self.writer.register_channel(sid, "json", self.image_schema,
                                                       channel_metadata(meta, encoding))
            else:
                channel = self.writer.register_channel(sid, RAW_ENCODING, 0, channel_metadata(meta, encoding))
            self.channels[key] = channel
        return channel

    def write(self, entries: Iterable[tuple[str, str, bytes]], metas: dict[str, dict]) -> None:
        """Add entries `(stream id, entry id, bytes)` in order."""
        for sid, entry_id, data in entries:
            log_time, sequence = entry_times(entry_id)
            fmt = image_format(data)
            if fmt is not None:
                channel = self._channel(sid, "image", metas.get(sid, {}))
                payload = compressed_image(sid, log_time, data, fmt)
            else:
                channel = self._channel(sid, "raw", metas.get(sid, {}))
                payload = data
            self.writer.add_message(channel, log_time=log_time, data=payload, publish_time=log_time,
                                    sequence=sequence)
            self.messages += 1
            self.bytes += len(data)

    def finish(self) -> None:
        """Write the indexes and summary and make the file durable (fsync)."""
        self.writer.finish()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def abandon(self) -> None:
        try:
            self.file.close()
        finally:
            self.path.unlink(missing_ok=True)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_messages(files: Iterable[str | Path], sids: Iterable[str] | None = None, limits: Limits | None = None,
                  oversized: str = "skip") -> Reading:
    """The entries of MCAP files in log time order, read with bounded memory (ptgstore.mcapread):
    iterate it; entries over the message limit are skipped and counted in its `skipped`."""
    return Reading(files, sids, limits, oversized)


def summarize(files: Iterable[str | Path], limits: Limits | None = None) -> dict[str, dict]:
    """Per stream: count, bytes, first and last entry ids, read from the files themselves."""
    return mcapread.summarize(files, limits)


def add_to_stats(streams: dict[str, dict], sid: str, entry_id: str, size: int) -> None:
    stats = streams.setdefault(sid, {})
    if "count" not in stats:
        stats.update({"count": 0, "bytes": 0, "first-entry": entry_id, "last-entry": entry_id})
    stats["count"] += 1
    stats["bytes"] += size
    stats["last-entry"] = entry_id
