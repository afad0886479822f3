"""Foxglove's CompressedImage and RawImage in the protobuf wire format, written by hand.

The binary alternative to their JSON form (`foxglove_schemas`): the image bytes go into the
message as they are (no base64 on either side), behind a header of a few dozen bytes. A channel
of this encoding is advertised with `encoding: protobuf`, `schemaEncoding: protobuf` and, as the
schema, a base64 `FileDescriptorSet` describing `google.protobuf.Timestamp` and the message
(field names and numbers as in Foxglove's schemas). No protobuf library is needed for four fields.
"""
from __future__ import annotations

import base64
import struct

VARINT, LEN, I32 = 0, 2, 5  # wire types
TYPE_INT64, TYPE_INT32, TYPE_FIXED32, TYPE_STRING, TYPE_MESSAGE, TYPE_BYTES = 3, 5, 7, 9, 11, 12
LABEL_OPTIONAL = 1
TIMESTAMP_FILE = "google/protobuf/timestamp.proto"
TIMESTAMP_TYPE = ".google.protobuf.Timestamp"

# (name, number, type) of each field, in Foxglove's numbering
COMPRESSED_IMAGE_FIELDS = (("timestamp", 1, TYPE_MESSAGE), ("frame_id", 4, TYPE_STRING), ("data", 2, TYPE_BYTES),
                           ("format", 3, TYPE_STRING))
RAW_IMAGE_FIELDS = (("timestamp", 1, TYPE_MESSAGE), ("frame_id", 7, TYPE_STRING), ("width", 2, TYPE_FIXED32),
                    ("height", 3, TYPE_FIXED32), ("encoding", 4, TYPE_STRING), ("step", 5, TYPE_FIXED32),
                    ("data", 6, TYPE_BYTES))


def varint(value: int) -> bytes:
    """A non-negative integer as a protobuf varint (negative int64 as its two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: strings, bytes, nested messages."""
    return _key(number, LEN) + varint(len(payload)) + payload


def _text(number: int, text: str) -> bytes:
    return _field(number, text.encode())


def _number(number: int, value: int) -> bytes:
    return _key(number, VARINT) + varint(value)


def _fixed32(number: int, value: int) -> bytes:
    return _key(number, I32) + struct.pack("<I", value)


def timestamp(ns: int) -> bytes:
    """A google.protobuf.Timestamp (seconds, nanos) of a time in nanoseconds."""
    return _number(1, ns // 1_000_000_000) + _number(2, ns % 1_000_000_000)


def compressed_image(sid: str, log_time: int, data: bytes, fmt: str) -> bytes:
    """A foxglove.CompressedImage message holding the image bytes as they are."""
    return b"".join((_field(1, timestamp(log_time)), _text(4, sid), _text(3, fmt),
                     _key(2, LEN), varint(len(data)), data))


def raw_image(sid: str, log_time: int, data: bytes, width: int, height: int, encoding: str, step: int) -> bytes:
    """A foxglove.RawImage message holding the pixel bytes as they are."""
    return b"".join((_field(1, timestamp(log_time)), _text(7, sid), _fixed32(2, width), _fixed32(3, height),
                     _text(4, encoding), _fixed32(5, step), _key(6, LEN), varint(len(data)), data))


# -- the schemas: FileDescriptorSet { FileDescriptorProto file = 1 } -----------------------------

def _field_descriptor(name: str, number: int, kind: int) -> bytes:
    # FieldDescriptorProto: name 1, number 3, label 4, type 5, type_name 6, json_name 10
    out = _text(1, name) + _number(3, number) + _number(4, LABEL_OPTIONAL) + _number(5, kind)
    if kind == TYPE_MESSAGE:
        out += _text(6, TIMESTAMP_TYPE)
    return out + _text(10, "".join(part if i == 0 else part.title() for i, part in enumerate(name.split("_"))))


def _message_descriptor(name: str, fields) -> bytes:
    # DescriptorProto: name 1, field 2
    return _text(1, name) + b"".join(_field(2, _field_descriptor(*field)) for field in fields)


def _file_descriptor(name: str, package: str, messages: list[bytes], dependencies=()) -> bytes:
    # FileDescriptorProto: name 1, package 2, dependency 3, message_type 4, syntax 12
    return (_text(1, name) + _text(2, package) + b"".join(_text(3, d) for d in dependencies)
            + b"".join(_field(4, m) for m in messages) + _text(12, "proto3"))


def descriptor_set(message: str, fields) -> str:
    """The base64 FileDescriptorSet of `foxglove.<message>` and google.protobuf.Timestamp."""
    timestamp_file = _file_descriptor(TIMESTAMP_FILE, "google.protobuf", [_message_descriptor(
        "Timestamp", (("seconds", 1, TYPE_INT64), ("nanos", 2, TYPE_INT32)))])
    image_file = _file_descriptor(f"foxglove/{message}.proto", "foxglove", [_message_descriptor(message, fields)],
                                  [TIMESTAMP_FILE])
    return base64.b64encode(_field(1, timestamp_file) + _field(1, image_file)).decode()


COMPRESSED_IMAGE_SCHEMA = descriptor_set("CompressedImage", COMPRESSED_IMAGE_FIELDS)
RAW_IMAGE_SCHEMA = descriptor_set("RawImage", RAW_IMAGE_FIELDS)
