"""`images=protobuf` on /foxglove: images and depth as Foxglove's own protobuf messages.

The binary alternative to their JSON form (`foxglove_schemas`): the image bytes go into the
message as they are (no base64 on either side). The messages are Foxglove's precompiled
`foxglove.CompressedImage` and `foxglove.RawImage` (PyPI `foxglove-schemas-protobuf`), serialized by
the `protobuf` runtime; a channel of this encoding is advertised with `encoding: protobuf`,
`schemaEncoding: protobuf` and, as the schema, the base64 `FileDescriptorSet` of the message's file
and the files it imports (google/protobuf/timestamp.proto), taken from the message's descriptor.

Server only (the `server` extra): the client and the recordings (`recordings.mcapfiles`) never import it.
"""
from __future__ import annotations

import base64

from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from foxglove_schemas_protobuf.RawImage_pb2 import RawImage
from google.protobuf.descriptor_pb2 import FileDescriptorSet
from google.protobuf.timestamp_pb2 import Timestamp

from .foxglove_schemas import NS_PER_S, Format, entry_times, image_format, payloads

ENCODING = "protobuf"
DEPTH_ENCODING = "16UC1"  # 16-bit depth in millimetres, one channel (layouts.DEPTH_U16_MM)


def descriptor_set(message) -> str:
    """The base64 `FileDescriptorSet` of a message type's file and, before it, every file it imports."""
    files = FileDescriptorSet()
    seen: set[str] = set()

    def add(file) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            add(dependency)
        file.CopyToProto(files.file.add())

    add(message.DESCRIPTOR.file)
    return base64.b64encode(files.SerializeToString()).decode()


IMAGE = Format("image.pb", ENCODING, CompressedImage.DESCRIPTOR.full_name, descriptor_set(CompressedImage), ENCODING)
_RAW_IMAGE_SCHEMA = descriptor_set(RawImage)


def variant(fmt: Format) -> Format:
    """The protobuf form of an image or depth format; other formats as they are."""
    if fmt.kind == "image":
        return IMAGE
    if fmt.kind == "depth":
        return Format("depth.pb", ENCODING, RawImage.DESCRIPTOR.full_name, _RAW_IMAGE_SCHEMA, ENCODING,
                      fmt.width, fmt.height)
    return fmt


def _timestamp(ns: int) -> Timestamp:
    seconds, nanos = divmod(ns, NS_PER_S)
    return Timestamp(seconds=seconds, nanos=nanos)


def protobuf_payloads(fmt: Format, sid: str, entry_id: str, data: bytes) -> list[bytes]:
    """`foxglove_schemas.payloads` for the formats `variant` gives: one message per entry, the
    entry's bytes in its `data` as they are, its time as the `timestamp`, the stream id as `frame_id`."""
    if fmt.kind == "image.pb":
        return [CompressedImage(timestamp=_timestamp(entry_times(entry_id)[0]), frame_id=sid, data=data,
                                format=image_format(data) or "").SerializeToString()]
    if fmt.kind == "depth.pb":
        return [RawImage(timestamp=_timestamp(entry_times(entry_id)[0]), frame_id=sid, width=fmt.width,
                         height=fmt.height, encoding=DEPTH_ENCODING, step=fmt.width * 2,
                         data=data).SerializeToString()]
    return payloads(fmt, sid, entry_id, data)
