"""Reading MCAP files with bounded memory, whatever they declare. No Redis, no HTTP.

An MCAP file is a sequence of records `(opcode: u8, length: u64, body)`; messages live in
chunks, whose records are compressed (zstd or lz4) and whose header declares their
uncompressed size. The mcap package's readers load a whole chunk record into memory and unpack
it whole (`StreamReader`, even with `emit_chunks`, reads the record whole; `breakup_chunk`
unpacks it whole), so a 33 KB chunk that unpacks to gigabytes takes gigabytes; its public API has
no way to stream a chunk. This reader parses the records itself (the format is a few lines:
https://mcap.dev/spec), checks every declared size before it reads or unpacks anything, and streams:

- a chunk declaring more than `max_chunk` uncompressed bytes (or a chunk record longer than
  that), or a zstd frame needing a window over `MAX_WINDOW`, is refused (`RecordTooLarge`)
  before any of it is unpacked; a record longer than the rest of its file or chunk is refused
  (`UnreadableRecording`) before it is read;
- a chunk's compressed bytes are read from the file in pieces by a streaming decompressor,
  and never more than the chunk declared is unpacked (more or fewer is `UnreadableRecording`,
  as is an uncompressed CRC that does not match);
- a message is checked against `max_message` (a foxglove.CompressedImage JSON message
  against its base64 size) from its record header, before its data is read: an oversized one
  is skipped, counted and reported (or refused, `oversized="refuse"`);
- schema and channel records keep only their names (at most `MAX_NAMES` bytes per file).

Memory while reading: one decompressor (its window at most `MAX_WINDOW`), the message being
read, and the reordering window of `Reading` (`REORDER_BYTES`). The server reads on one thread of
its own (`off_loop`): the memory a read takes is reused by the next one rather than taken anew by
whichever worker thread (and malloc arena) the next one lands on.
"""
from __future__ import annotations

import asyncio
import binascii
import functools
import heapq
import io
import itertools
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

import orjson
import zstandard
from lz4 import frame as lz4frame
from mcap.opcode import Opcode

from ..foxglove_schemas import IMAGE_SCHEMA_NAME

MAGIC = b"\x89MCAP0\r\n"
MiB = 1024 * 1024
MAX_WINDOW = 8 * MiB  # a zstd frame needing more history than this is refused (zstd -19 uses 8 MiB)
MAX_NAMES = 4 * MiB  # bytes of topics, encodings and schema names kept per file
MAX_NAME = 4096  # bytes of one topic, encoding or schema name
PIECE = 1 * MiB  # bytes read at once when skipping
REORDER_BYTES = 4 * MiB  # entries held back to put the files' entries in log time order...
REORDER_COUNT = 4096  # ... or this many
IMAGE_ENVELOPE = 64 * 1024  # JSON around a CompressedImage's base64 data: timestamp, frame_id, format
_MESSAGE_HEADER = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time


_READER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptgstore-mcap")


async def off_loop(function: Callable[..., Any], *args) -> Any:
    """`function(*args)` on the thread that reads MCAP files (one, shared: see the module docstring)."""
    return await asyncio.get_running_loop().run_in_executor(_READER, functools.partial(function, *args))


class UnreadableRecording(ValueError):
    """A file that is not MCAP this server can read: damaged, truncated, or compressed otherwise."""


class RecordTooLarge(UnreadableRecording):
    """A chunk, record or message larger than the configured limits allow."""


@dataclass(frozen=True)
class Limits:
    """What a reader refuses or skips (the server's come from its settings: `Limits.of(settings)`)."""

    max_message: int = 16 * MiB  # an entry's bytes
    max_chunk: int = 4 * MiB + 16 * MiB * 4 // 3 + 2 * MiB  # a chunk's uncompressed bytes (settings.max_chunk_bytes)

    @classmethod
    def of(cls, settings) -> "Limits":
        return cls(settings.max_message, settings.max_chunk_bytes)


@dataclass(order=True)
class Message:
    log_time: int
    order: tuple = field(compare=True)
    sid: str = field(compare=False)
    entry_id: str = field(compare=False)
    data: bytes = field(compare=False)


@dataclass
class _Channel:
    topic: str
    encoding: str
    image: bool  # a foxglove.CompressedImage JSON channel: the entry is its base64-decoded `data`


class _FileSource:
    """The file's bytes, read exactly, skipped by seeking."""

    def __init__(self, stream: IO[bytes], size: int):
        self.stream = stream
        self.left = size

    def read(self, n: int) -> bytes:
        if n > self.left:
            raise UnreadableRecording(f"truncated: a record needs {n} bytes where {self.left} are left")
        data = self.stream.read(n)
        if len(data) != n:
            raise UnreadableRecording("truncated while reading")
        self.left -= n
        return data

    def skip(self, n: int) -> None:
        if n > self.left:
            raise UnreadableRecording(f"truncated: a record needs {n} bytes where {self.left} are left")
        self.stream.seek(n, 1)
        self.left -= n


class _Region(io.RawIOBase):
    """`length` bytes of a file from where it stands: the compressed bytes of a chunk."""

    def __init__(self, stream: IO[bytes], length: int):
        super().__init__()
        self.stream = stream
        self.left = length

    def readinto(self, buffer) -> int:
        data = self.stream.read(min(len(buffer), self.left))
        self.left -= len(data)
        buffer[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class _ChunkSource:
    """A chunk's records as they are unpacked: exactly the declared size, its CRC checked at the end."""

    def __init__(self, unpacked, size: int, crc: int):
        self.unpacked = unpacked
        self.left = size
        self.crc_expected = crc
        self.crc = 0

    def read(self, n: int) -> bytes:
        if n > self.left:
            raise UnreadableRecording(f"a chunk record needs {n} bytes where the chunk declares {self.left} more")
        parts, want = [], n
        while want:
            piece = self.unpacked.read(want)
            if not piece:
                raise UnreadableRecording("a chunk unpacks to fewer bytes than it declares")
            parts.append(piece)
            want -= len(piece)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.left -= n
        self.crc = zlib.crc32(data, self.crc)
        return data

    def skip(self, n: int) -> None:
        while n:
            step = min(n, PIECE)
            self.read(step)
            n -= step

    def finish(self) -> None:
        if self.unpacked.read(1):
            raise UnreadableRecording("a chunk unpacks to more bytes than it declares")
        if self.crc_expected and self.crc != self.crc_expected:
            raise UnreadableRecording("a chunk's CRC does not match its records")


class _Fields:
    """The fields of one record of `length` bytes, none read past its end."""

    def __init__(self, source, length: int):
        self.source = source
        self.left = length

    def read(self, n: int) -> bytes:
        if n > self.left:
            raise UnreadableRecording("a field runs past the end of its record")
        self.left -= n
        return self.source.read(n)

    def string(self, what: str) -> str:
        (n,) = struct.unpack("<I", self.read(4))
        if n > MAX_NAME:
            raise UnreadableRecording(f"{what} is longer than {MAX_NAME} bytes")
        return self.read(n).decode("utf-8", "replace")

    def skip_rest(self) -> None:
        self.source.skip(self.left)
        self.left = 0


class FileReader:
    """The entries of one MCAP file in file order, with bounded memory (see the module docstring).

    `sids`: only these topics. `oversized`: "skip" (count in `skipped`) or "refuse" (RecordTooLarge).
    `headers_only`: raw messages are not read (their `data` is empty; `size` says how long)."""

    def __init__(self, path: str | Path, limits: Limits, sids: set[str] | None = None,
                 oversized: str = "skip", headers_only: bool = False):
        self.path = Path(path)
        self.limits = limits
        self.sids = sids
        self.oversized = oversized
        self.headers_only = headers_only
        self.skipped: dict[str, int] = {}
        self.schemas: dict[int, str] = {}
        self.channels: dict[int, _Channel] = {}
        self.names = 0

    def __iter__(self) -> Iterator[tuple[Message, int]]:
        """(message, entry size) pairs; `message.data` is empty with `headers_only` for raw entries."""
        with open(self.path, "rb") as stream:
            source = _FileSource(stream, self.path.stat().st_size)
            if source.read(len(MAGIC)) != MAGIC:
                raise UnreadableRecording("not an MCAP file (no magic bytes)")
            while True:
                opcode, length = struct.unpack("<BQ", source.read(9))
                if length > source.left:
                    raise UnreadableRecording(f"a record declares {length} bytes where {source.left} are left")
                if opcode == Opcode.FOOTER:
                    source.skip(length)
                    if source.read(len(MAGIC)) != MAGIC:
                        raise UnreadableRecording("no magic bytes after the footer")
                    return
                if opcode == Opcode.CHUNK:
                    yield from self._chunk(stream, source, length)
                else:
                    yield from self._record(source, opcode, length)

    def _chunk(self, stream: IO[bytes], source: _FileSource, length: int) -> Iterator[tuple[Message, int]]:
        if length > self.limits.max_chunk + MiB:
            raise RecordTooLarge(f"a chunk record of {length} bytes is over the limit of {self.limits.max_chunk}")
        head = source.read(8 + 8 + 8 + 4 + 4)
        _, _, size, crc, name_length = struct.unpack("<QQQII", head)
        if size > self.limits.max_chunk:
            raise RecordTooLarge(f"a chunk declares {size} uncompressed bytes, over the limit of "
                                 f"{self.limits.max_chunk} (PTGSTORE_MAX_CHUNK)")
        if name_length > 64:
            raise UnreadableRecording("a chunk names an unknown compression")
        compression = source.read(name_length).decode("ascii", "replace")
        (packed,) = struct.unpack("<Q", source.read(8))
        if packed != length - len(head) - name_length - 8:
            raise UnreadableRecording("a chunk's compressed size does not match its record")
        source.left -= packed  # the decompressor reads these bytes from the stream itself
        if source.left < 0:
            raise UnreadableRecording("truncated: a chunk runs past the end of the file")
        end = stream.tell() + packed
        region = io.BufferedReader(_Region(stream, packed))
        unpacked: IO[bytes]
        if compression == "zstd":
            unpacked = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).stream_reader(region, read_across_frames=True)
        elif compression == "lz4":
            unpacked = lz4frame.LZ4FrameFile(region, "rb")
        elif compression == "":
            if packed != size:
                raise UnreadableRecording("an uncompressed chunk's size does not match its record")
            unpacked = region
        else:
            raise UnreadableRecording(f"a chunk is compressed with {compression[:20]!r} (not zstd or lz4)")
        chunk = _ChunkSource(unpacked, size, crc)
        try:
            while chunk.left:
                opcode, record_length = struct.unpack("<BQ", chunk.read(9))
                yield from self._record(chunk, opcode, record_length)
            chunk.finish()
        except (zstandard.ZstdError, RuntimeError, OSError, EOFError) as exc:  # lz4 raises RuntimeError
            problem = str(exc)
            if "too much memory" in problem:
                raise RecordTooLarge(f"a chunk's zstd frame needs a window over {MAX_WINDOW} bytes") from None
            raise UnreadableRecording(f"a chunk does not unpack: {problem[:120]}") from None
        stream.seek(end)

    def _record(self, source, opcode: int, length: int) -> Iterator[tuple[Message, int]]:
        if length > source.left:
            raise UnreadableRecording(f"a record declares {length} bytes where {source.left} are left")
        if opcode == Opcode.MESSAGE:
            yield from self._message(source, length)
        elif opcode == Opcode.CHANNEL:
            self._channel(source, length)
        elif opcode == Opcode.SCHEMA:
            self._schema(source, length)
        else:
            source.skip(length)

    def _names_fit(self, size: int, replaced: int) -> None:
        """Keep count of the name bytes held (a record may define an id again, as each chunk may)."""
        self.names += size - replaced
        if self.names > MAX_NAMES:
            raise RecordTooLarge(f"the file's channels and schemas name more than {MAX_NAMES} bytes")

    def _schema(self, source, length: int) -> None:
        fields = _Fields(source, length)
        (schema_id,) = struct.unpack("<H", fields.read(2))
        name = fields.string("a schema's name")
        fields.skip_rest()  # its encoding and data: not needed to read entries
        self._names_fit(len(name), len(self.schemas.get(schema_id, "")))
        self.schemas[schema_id] = name

    def _channel(self, source, length: int) -> None:
        fields = _Fields(source, length)
        channel_id, schema_id = struct.unpack("<HH", fields.read(4))
        topic = fields.string("a channel's topic")
        encoding = fields.string("a channel's message encoding")
        fields.skip_rest()  # its metadata: not needed to read entries
        old = self.channels.get(channel_id)
        self._names_fit(len(topic) + len(encoding), len(old.topic) + len(old.encoding) if old else 0)
        image = encoding == "json" and self.schemas.get(schema_id) == IMAGE_SCHEMA_NAME
        self.channels[channel_id] = _Channel(topic, encoding, image)

    def _message(self, source, length: int) -> Iterator[tuple[Message, int]]:
        if length < _MESSAGE_HEADER.size:
            raise UnreadableRecording("a message record is too short")
        channel_id, sequence, log_time, _ = _MESSAGE_HEADER.unpack(source.read(_MESSAGE_HEADER.size))
        size = length - _MESSAGE_HEADER.size
        channel = self.channels.get(channel_id)
        if channel is None:
            raise UnreadableRecording(f"a message on channel {channel_id}, which no channel record defines")
        if self.sids is not None and channel.topic not in self.sids:
            source.skip(size)
            return
        limit = self.limits.max_message
        if channel.image:
            limit = limit * 4 // 3 + 4 + IMAGE_ENVELOPE
        entry_id = f"{log_time // 1_000_000}-{sequence}"
        if size > limit:
            source.skip(size)
            self._oversized(channel.topic, size)
            if self.headers_only:  # counted as the recording holds it (its record's size)
                yield Message(log_time, (sequence,), channel.topic, entry_id, b""), size
            return
        if not channel.image and self.headers_only:
            source.skip(size)
            yield Message(log_time, (sequence,), channel.topic, entry_id, b""), size
            return
        if channel.image:
            data, size = _image(source, size, self.headers_only)
            size = size or len(data)
        else:
            data = source.read(size)
        if channel.image and size > self.limits.max_message:
            self._oversized(channel.topic, size)
            if not self.headers_only:
                return
        yield Message(log_time, (sequence,), channel.topic, entry_id, data), size

    def _oversized(self, topic: str, size: int) -> None:
        if self.oversized == "refuse":
            raise RecordTooLarge(f"an entry of {size} bytes on stream {topic[:40]!r} is over "
                                 f"PTGSTORE_MAX_MESSAGE ({self.limits.max_message})")
        self.skipped[topic] = self.skipped.get(topic, 0) + 1


# how the recorder writes a CompressedImage (mcapfiles.SegmentWriter, orjson): read without a JSON parser,
# so that the text and its base64 string are never both held (another layout goes through orjson)
_OWN_IMAGE = re.compile(rb'\{"timestamp":\{"sec":[0-9]+,"nsec":[0-9]+\},"frame_id":"(?:[^"\\\x00-\x1f]|\\.)*",'
                        rb'"data":"([A-Za-z0-9+/]*={0,2})","format":"[a-z]*"\}')  # (one repeat: no backtracking state)


def _image(source, size: int, measure_only: bool) -> tuple[bytes, int]:
    """The image of a foxglove.CompressedImage JSON message of `size` bytes (its base64 `data`) and its
    size; with `measure_only`, only its size (and the image is b"")."""
    text = source.read(size)
    own = _OWN_IMAGE.fullmatch(text)
    if own is not None and (own.end(1) - own.start(1)) % 4 == 0:
        start, end = own.span(1)
        if measure_only:
            return b"", (end - start) // 4 * 3 - text[max(start, end - 2):end].count(b"=")
        return binascii.a2b_base64(memoryview(text)[start:end]), 0
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UnreadableRecording(f"a foxglove.CompressedImage message is not JSON: {exc}") from None
    del text  # (let go of before the image is decoded)
    encoded = document.get("data") if isinstance(document, dict) else None
    del document
    if not isinstance(encoded, str):
        raise UnreadableRecording("a foxglove.CompressedImage message has no base64 data")
    try:
        image = binascii.a2b_base64(encoded)  # (an ASCII str is read in place, not copied to bytes first)
    except (binascii.Error, ValueError) as exc:
        raise UnreadableRecording(f"a foxglove.CompressedImage message's data is not base64: {exc}") from None
    return (b"", len(image)) if measure_only else (image, 0)


class Reading:
    """The entries of MCAP files in log time order with bounded memory. The files are merged (those
    of a recording's shards overlap in time): a file is opened once the merge reaches its first
    entry, so the files open at once are those that overlap (about one per shard). Entries a file
    holds out of order are put back in order within a window of `REORDER_BYTES` / `REORDER_COUNT`
    entries per open file. Entries over the message limit are skipped and counted per stream in
    `skipped` (or refused: `oversized="refuse"`)."""

    def __init__(self, files: Iterable[str | Path], sids: Iterable[str] | None = None,
                 limits: Limits | None = None, oversized: str = "skip"):
        self.files = [Path(f) for f in files]
        self.sids = set(sids) if sids is not None else None
        self.limits = limits or Limits()
        self.oversized = oversized
        self.skipped: dict[str, int] = {}
        self._messages = self._read()

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        return next(self._messages)

    def _firsts(self) -> list[tuple[int, int, Path]]:
        """(log time of its first entry, index, path) of each file, in that order."""
        firsts = []
        for index, path in enumerate(self.files):
            first = next(iter(FileReader(path, self.limits, self.sids, "skip", headers_only=True)), None)
            firsts.append((first[0].log_time if first else 0, index, path))
        return sorted(firsts)

    def _file(self, index: int, path: Path) -> Iterator[Message]:
        """One file's entries in log time order (within its reordering window)."""
        reader = FileReader(path, self.limits, self.sids, self.oversized)
        held: list[tuple[int, int, Message]] = []
        size = number = 0
        for message, _ in reader:
            message.order = (index, *message.order)
            number += 1
            heapq.heappush(held, (message.log_time, number, message))
            size += len(message.data)
            del message  # (nor the one given out below: neither is held while the next is read)
            while size > REORDER_BYTES or len(held) > REORDER_COUNT:
                out = heapq.heappop(held)[2]
                size -= len(out.data)
                yield out
                del out
        for topic, n in reader.skipped.items():
            self.skipped[topic] = self.skipped.get(topic, 0) + n
        while held:
            yield heapq.heappop(held)[2]

    def _read(self) -> Iterator[Message]:
        pending = self._firsts() if len(self.files) > 1 else [(0, 0, f) for f in self.files]
        heads: list[tuple[int, int, Message, Iterator[Message]]] = []  # each open file's next entry
        ties = itertools.count()
        opened = 0
        while True:
            while opened < len(pending) and (not heads or pending[opened][0] <= heads[0][0]):
                _, index, path = pending[opened]
                entries = self._file(index, path)
                first = next(entries, None)
                if first is not None:
                    heapq.heappush(heads, (first.log_time, next(ties), first, entries))
                opened += 1
            if not heads:
                return
            _, _, message, entries = heads[0]
            following = next(entries, None)
            if following is None:
                heapq.heappop(heads)
            else:
                heapq.heapreplace(heads, (following.log_time, next(ties), following, entries))
            yield message
            del message, following


def summarize(files: Iterable[str | Path], limits: Limits | None = None) -> dict[str, dict]:
    """Per stream: count, bytes, first and last entry ids, read from the files themselves (raw
    entries are counted from their record headers, without reading them)."""
    limits = limits or Limits()
    streams: dict[str, dict] = {}
    for path in files:
        for message, size in FileReader(path, limits, headers_only=True):
            stats = streams.get(message.sid)
            key = (message.log_time, message.order[-1])
            if stats is None:
                streams[message.sid] = stats = {"count": 0, "bytes": 0, "first-entry": message.entry_id,
                                                "last-entry": message.entry_id, "_first": key, "_last": key}
            stats["count"] += 1
            stats["bytes"] += size
            if key < stats["_first"]:
                stats["first-entry"], stats["_first"] = message.entry_id, key
            if key >= stats["_last"]:
                stats["last-entry"], stats["_last"] = message.entry_id, key
    for stats in streams.values():
        del stats["_first"], stats["_last"]
    return streams
