"""Pure codec for the wire protocol: stream ids, cursors, headers, offsets, timestamps. No I/O."""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

import msgpack
import orjson

MAX_STREAM_ID_BYTES = 256
# ptgstore's own keys (keys.py) are named like streams: no stream id may name them
RESERVED_PREFIX = "ptgstore:"
RESERVED_STREAM_IDS = frozenset({"recording:id"})  # the original server's key of the active recording
# streams only the server writes (the recorder's announcements): readable, never written or deleted by clients
SERVER_STREAMS = frozenset({"event:recording:id"})
MAX_PART = 2**64 - 1  # Redis keeps both parts of an entry id in 64 unsigned bits
_DIGITS = frozenset("0123456789")


class FramingError(ValueError):
    """Malformed input from a client: bad stream id, cursor, header, offsets or timestamp."""


# -- stream ids and cursors -----------------------------------------------------------------

def validate_stream_id(sid: str) -> str:
    """`sid` when it is a valid stream id, else FramingError saying why."""
    if not sid:
        raise FramingError("empty stream id")
    if len(sid.encode("utf-8", "surrogatepass")) > MAX_STREAM_ID_BYTES:
        raise FramingError(f"stream id longer than {MAX_STREAM_ID_BYTES} bytes")
    if sid == "*":
        raise FramingError("'*' is not a stream id here")
    if "+" in sid:
        raise FramingError("stream id contains '+'")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in sid):
        raise FramingError("stream id contains a control character or is not valid UTF-8")
    if sid in RESERVED_STREAM_IDS or sid.startswith(RESERVED_PREFIX):
        raise FramingError(f"stream id {sid!r} is reserved (ids starting with {RESERVED_PREFIX!r} and "
                           "'recording:id' name the server's own keys)")
    return sid


def writable_stream_id(sid: str) -> str:
    """`sid` when a client may write to it or delete it, else FramingError saying why."""
    if validate_stream_id(sid) in SERVER_STREAMS:
        raise FramingError(f"stream {sid!r} is written by the server only")
    return sid


def split_stream_ids(path_sid: str) -> list[str]:
    """The stream ids of a path segment `a+b+c`, each validated."""
    return [validate_stream_id(sid) for sid in path_sid.split("+")]


def split_writable_stream_ids(path_sid: str) -> list[str]:
    """Like `split_stream_ids`, for a write or a delete: streams only the server writes are refused."""
    return [writable_stream_id(sid) for sid in path_sid.split("+")]


def unique_stream_ids(path_sid: str) -> list[str]:
    """Like `split_stream_ids` but each stream once, first mention first (for reads)."""
    return list(dict.fromkeys(split_stream_ids(path_sid)))


def _is_digits(text: str) -> bool:
    return bool(text) and set(text) <= _DIGITS


def parse_entry_id(text: str) -> tuple[int, int]:
    """`ms-seq` (or bare `ms`) as a pair of ints; ASCII digits only."""
    ms, sep, seq = text.partition("-")
    if not _is_digits(ms) or (sep and not _is_digits(seq)):
        raise FramingError(f"malformed entry id {text!r}")
    pair = (int(ms), int(seq) if sep else 0)
    if pair[0] > MAX_PART or pair[1] > MAX_PART:
        raise FramingError(f"entry id out of range {text!r}")
    return pair


def format_entry_id(pair: tuple[int, int]) -> str:
    return f"{pair[0]}-{pair[1]}"


NEWEST = "*"  # the newest `count` entries
NOW = "$"  # only entries added after this moment
BEGINNING = "0-0"
LAST_POSSIBLE_ID = format_entry_id((MAX_PART, MAX_PART))  # no entry id is larger


def id_before(pair: tuple[int, int]) -> tuple[int, int]:
    """The entry id just before `pair` (cursors are exclusive: a read after it starts at `pair`);
    `0-0` has none before it and stays `0-0`."""
    ms, seq = pair
    if seq:
        return ms, seq - 1
    return (ms - 1, MAX_PART) if ms else (0, 0)


def cursor_before(entry_id: str) -> str:
    """The cursor from which a read starts at `entry_id` itself."""
    return format_entry_id(id_before(parse_entry_id(entry_id)))


def parse_cursor(text: str) -> str:
    """A `last_entry_id` value as `*`, `$`, or a normalised entry id (`0` and `-` become `0-0`)."""
    if text in (NEWEST, NOW):
        return text
    if text in ("0", "-"):
        return BEGINNING
    return format_entry_id(parse_entry_id(text))


def parse_cursors(value: str, count: int) -> list[str]:
    """One cursor per stream from `a+b` (or `a b`, as an unencoded `+` arrives); fewer values repeat."""
    parts = [p for p in value.replace(" ", "+").split("+") if p] or [NOW]
    if len(parts) > count:
        raise FramingError(f"{len(parts)} last_entry_id values for {count} streams")
    cursors = [parse_cursor(p) for p in parts]
    return [cursors[i % len(cursors)] for i in range(count)]


MAX_COUNT = 100_000  # entries per stream per read


def parse_count(text: str | None, default: int = 1, maximum: int = MAX_COUNT) -> int:
    """A positive `count` query value (ASCII digits)."""
    if text is None or text == "":
        return default
    if not _is_digits(text) or not 1 <= int(text) <= maximum:
        raise FramingError(f"count must be a whole number from 1 to {maximum}, not {text!r}")
    return int(text)


# -- timestamps -------------------------------------------------------------------------------

def timestamp_spec(ts: object) -> str:
    """How an entry's id is chosen: `*` (server time), `t<ms>` (client time), or an explicit id."""
    if ts is None:
        return "*"
    if isinstance(ts, bool):
        raise FramingError("timestamp must be a number, an entry id string or null")
    if isinstance(ts, (int, float)):
        if not math.isfinite(ts) or ts < 0:
            raise FramingError(f"timestamp out of range: {ts!r}")
        # rounded to the microsecond first, so float error cannot turn 1.001 s into 1000 ms
        ms = math.floor(round(ts * 1000, 3))
        if ms > MAX_PART:
            raise FramingError(f"timestamp out of range: {ts!r}")
        return f"t{ms}"
    if isinstance(ts, str):
        if _is_digits(ts):
            return f"t{parse_entry_id(ts)[0]}"
        ms, seq = parse_entry_id(ts)
        if (ms, seq) == (0, 0):
            raise FramingError("entry id 0-0 cannot be stored")
        return f"{ms}-{seq}"
    raise FramingError("timestamp must be a number, an entry id string or null")


# -- headers ----------------------------------------------------------------------------------

HEADER_CODECS = ("json", "msgpack")


def parse_header_codec(text: str | None) -> str:
    codec = (text or "json").lower()
    if codec not in HEADER_CODECS:
        raise FramingError(f"header must be json or msgpack, not {text!r}")
    return codec


def encode_header(items: list[Any], codec: str = "json") -> bytes:
    """A batch header as JSON or MessagePack bytes."""
    if codec == "msgpack":
        packed: bytes = msgpack.packb(items, use_bin_type=True)
        return packed
    return orjson.dumps(items)


def ascii_json(value: object) -> str:
    """`value` as JSON in ASCII only (`\\u` escapes), for HTTP headers: a header value is Latin-1
    on the wire, so a stream id such as `日` written as UTF-8 would not survive."""
    text = orjson.dumps(value).decode()
    return text if text.isascii() else json.dumps(value, ensure_ascii=True, separators=(",", ":"))


def decode_header(raw: bytes | str, codec: str = "json") -> list[Any]:
    """A client's batch header as a list of items; FramingError when it does not parse."""
    try:
        if codec == "msgpack":
            if isinstance(raw, str):
                raise FramingError("a MessagePack header must be a binary message")
            items = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0)
        else:
            items = orjson.loads(raw)
    except FramingError:
        raise
    except Exception as exc:  # any decoder failure is the client's malformed header
        raise FramingError(f"malformed {codec} header: {exc}".strip()[:100]) from None
    if not isinstance(items, list):
        raise FramingError("header must be a list")
    return items


def pack_entries(entries: Iterable[tuple[str, str, bytes]]) -> tuple[list[list[str | int]], bytes]:
    """Server-to-client batch: header `[[sid, id, start], ...]` and the concatenated blob."""
    header: list[list[str | int]] = []
    chunks = []
    offset = 0
    for sid, entry_id, data in entries:
        header.append([sid, entry_id, offset])
        chunks.append(data)
        offset += len(data)
    return header, b"".join(chunks)


def unpack_entries(header_items: list[Any], blob: bytes) -> list[tuple[str, str, bytes]]:
    """A server-to-client batch back as `(stream id, entry id, bytes)`; FramingError when malformed."""
    for i, item in enumerate(header_items):
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str) and isinstance(item[1], str)):
            raise FramingError(f"header item {i} is not [stream id, entry id, offset]")
    spans = _resolve_offsets([_offset(item[2]) for item in header_items], len(blob), "start")
    return [(sid, entry_id, blob[start:end]) for (sid, entry_id, _), (start, end) in zip(header_items, spans)]


# -- client batches ---------------------------------------------------------------------------

OFFSET_MODES = ("auto", "start", "end")


def parse_offsets_mode(text: str | None) -> str:
    mode = (text or "auto").lower()
    if mode not in OFFSET_MODES:
        raise FramingError(f"offsets must be auto, start or end, not {text!r}")
    return mode


def _offset(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FramingError(f"offset must be a whole number, not {value!r}"[:100])
    return value


def _parse_item(item: object, index: int) -> tuple[str | None, str, int]:
    """(stream id or None for 'the path decides', id spec, offset) of one header item."""
    if isinstance(item, list):
        if len(item) == 2:
            sid, ts, offset = item[0], None, item[1]
        elif len(item) == 3:
            sid, ts, offset = item
        else:
            raise FramingError(f"header item {index} has {len(item)} fields; expected 2 or 3")
        if not isinstance(sid, str):
            raise FramingError(f"header item {index}: stream id must be a string")
        return sid, timestamp_spec(ts), _offset(offset)
    return None, "*", _offset(item)


def _resolve_offsets(offsets: list[int], blob_len: int, mode: str) -> list[tuple[int, int]]:
    """(start, end) of every entry, reading offsets as start or end offsets."""
    if not offsets:
        return []
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        raise FramingError("offsets decrease")
    if offsets[0] < 0 or offsets[-1] > blob_len:
        raise FramingError("offsets run past the blob")
    if mode == "auto":
        if offsets[0] == 0:
            mode = "start"
        elif offsets[-1] == blob_len:
            mode = "end"
        else:
            raise FramingError("offsets are neither start offsets (first 0) nor end offsets (last = blob length)")
    if mode == "start":
        if offsets[0] != 0:
            raise FramingError("start offsets must begin at 0")
        ends = offsets[1:] + [blob_len]
        return list(zip(offsets, ends))
    if offsets[-1] != blob_len:
        raise FramingError("the last end offset must equal the blob length")
    return list(zip([0] + offsets[:-1], offsets))


def split_batch(
    header_items: list[Any], blob: bytes, path_sid: str, offsets_mode: str = "auto"
) -> list[tuple[str, str, memoryview]]:
    """A client batch as `(stream id, id spec, bytes)` per entry, in order.

    `path_sid` is the stream part of the URL: `*` (each item names its stream), one
    stream (names in the header are ignored), or `a+b` (bare offsets go to the i-th stream).
    """
    if path_sid == "*":
        path_sids: list[str] = []
    else:
        path_sids = split_writable_stream_ids(path_sid)
    if not header_items and blob:
        raise FramingError(f"the header lists no entries but the blob holds {len(blob)} bytes")
    parsed = [_parse_item(item, i) for i, item in enumerate(header_items)]
    spans = _resolve_offsets([p[2] for p in parsed], len(blob), offsets_mode)
    bare = [p for p in parsed if p[0] is None]
    if path_sid == "*" and bare:
        raise FramingError("with stream '*' every header item must name its stream")
    if len(path_sids) > 1 and bare and len(parsed) != len(path_sids):
        raise FramingError(f"{len(parsed)} entries for {len(path_sids)} streams in the path")
    view = memoryview(blob)
    entries = []
    for i, ((sid, spec, _), (start, end)) in enumerate(zip(parsed, spans)):
        if path_sid == "*":
            target = writable_stream_id(sid or "")  # (never None here: bare items were refused above)
        elif len(path_sids) == 1:
            target = path_sids[0]
        elif sid is None:
            target = path_sids[i]
        else:
            target = validate_stream_id(sid)
            if target not in path_sids:
                raise FramingError(f"header item {i} names stream {target!r}, not in the path")
        entries.append((target, spec, view[start:end]))
    return entries
