"""MCAP files built record by record, as a hostile client would: chunks that declare one size and
unpack to another, zstd bombs, messages longer than any limit. (Valid files come from mcap's Writer.)"""
from __future__ import annotations

import struct
import zlib

import lz4.frame
import zstandard

MAGIC = b"\x89MCAP0\r\n"
MiB = 1024 * 1024


def record(opcode: int, body: bytes) -> bytes:
    return struct.pack("<BQ", opcode, len(body)) + body


def string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<I", len(data)) + data


def channel(channel_id: int, topic: str, encoding: str = "application/octet-stream", schema: int = 0) -> bytes:
    return record(0x04, struct.pack("<HH", channel_id, schema) + string(topic) + string(encoding) + struct.pack("<I", 0))


def message_header(channel_id: int, sequence: int, log_time: int, size: int) -> bytes:
    """A message record's opcode, length and fixed fields, for `size` bytes of data that follow."""
    return struct.pack("<BQHIQQ", 0x05, 22 + size, channel_id, sequence, log_time, log_time)


def message(channel_id: int, sequence: int, log_time: int, data: bytes) -> bytes:
    return message_header(channel_id, sequence, log_time, len(data)) + data


def chunk(packed: bytes, compression: str, declared: int, crc: int = 0, start: int = 0, end: int = 0) -> bytes:
    body = struct.pack("<QQQI", start, end, declared, crc) + string(compression) + struct.pack("<Q", len(packed))
    return record(0x06, body + packed)


def mcap_file(*records: bytes) -> bytes:
    """A whole file: magic, header, the records, data end, footer (no summary), magic."""
    header = record(0x01, string("") + string("mcapforge"))
    footer = record(0x02, struct.pack("<QQI", 0, 0, 0))
    return MAGIC + header + b"".join(records) + record(0x0F, struct.pack("<I", 0)) + footer + MAGIC


def zstd_bomb(unpacked: int = 2 * 1024 * MiB, honest: bool = True) -> bytes:
    """A file whose one chunk unpacks to `unpacked` bytes (a channel, then one message of almost all
    of them, zeros) from a few dozen KB of zstd: the chunk declares its true size (`honest`), or 1 MiB."""
    inner_head = channel(1, "bomb") + message_header(1, 0, 1_000_000_000, unpacked)
    size = len(inner_head) + unpacked
    compressor = zstandard.ZstdCompressor(level=3).compressobj(size=size)
    parts = [compressor.compress(inner_head)]
    zeros = bytes(16 * MiB)
    left = unpacked
    while left:
        step = min(left, len(zeros))
        parts.append(compressor.compress(zeros[:step]))
        left -= step
    parts.append(compressor.flush())
    packed = b"".join(parts)
    return mcap_file(chunk(packed, "zstd", size if honest else MiB))


def lz4_chunk_file(records: bytes, declared: int | None = None) -> bytes:
    packed = lz4.frame.compress(records)
    return mcap_file(chunk(packed, "lz4", len(records) if declared is None else declared, zlib.crc32(records)))


def zstd_chunk_file(records: bytes, declared: int | None = None, crc: int | None = None) -> bytes:
    packed = zstandard.ZstdCompressor().compress(records)
    return mcap_file(chunk(packed, "zstd", len(records) if declared is None else declared,
                           zlib.crc32(records) if crc is None else crc))
