"""How an entry becomes a Foxglove message: the one place that knows Foxglove's schemas.

Shared by the recordings (MCAP files, `recordings.mcapfiles`) and the live Foxglove endpoint
(`routes/foxglove.py`). No Redis, no HTTP. A stream's `Format` is chosen from its metadata and
its newest entry (`classify`); `payloads` turns one entry into the message payloads of its channel:

- JPEG/PNG entries: `foxglove.CompressedImage`, message encoding `json` with its `jsonschema`;
  the image base64-encoded in `data` (decoding it gives the entry's bytes exactly).
- `depth-u16-mm` streams (`layouts`): `foxglove.RawImage`, `json`, encoding `16UC1`, the entry's
  bytes base64-encoded in `data`.
- `imu-d6f` streams: `ptgstore.Imu` JSON messages, one per sample.
- JSON-object entries: `json` as they are (byte for byte), with a JSON schema inferred from the
  newest entry when the stream was first seen (so that Foxglove's Plot panel offers its fields).
- anything else: message encoding `application/octet-stream`, no schema, the entry's bytes as
  they are (Foxglove lists the topic but has no decoder for it; other clients get the bytes).
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import orjson

from . import layouts

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
MAX_SEQUENCE = 2**32 - 1  # the MCAP `sequence` field is 32 bits
RAW_ENCODING = "application/octet-stream"
IMAGE_SCHEMA_NAME = "foxglove.CompressedImage"
RAW_IMAGE_SCHEMA_NAME = "foxglove.RawImage"
IMU_SCHEMA_NAME = "ptgstore.Imu"
INFERRED_DEPTH = 6  # levels of a JSON entry described by an inferred schema
INFERRED_FIELDS = 256  # properties per object described by an inferred schema

_TIME = {"type": "object", "title": "time", "properties": {
    "sec": {"type": "integer", "minimum": 0}, "nsec": {"type": "integer", "minimum": 0}}}
_VECTOR = {"type": "object", "properties": {axis: {"type": "number"} for axis in "xyz"}}

# Foxglove's CompressedImage, as a JSON schema (https://docs.foxglove.dev/docs/sdk/schemas/compressed-image)
IMAGE_SCHEMA = orjson.dumps({
    "title": IMAGE_SCHEMA_NAME,
    "description": "A compressed image",
    "type": "object",
    "properties": {
        "timestamp": _TIME,
        "frame_id": {"type": "string"},
        "data": {"type": "string", "contentEncoding": "base64"},
        "format": {"type": "string"},
    },
})
# Foxglove's RawImage (https://docs.foxglove.dev/docs/sdk/schemas/raw-image)
RAW_IMAGE_SCHEMA = orjson.dumps({
    "title": RAW_IMAGE_SCHEMA_NAME,
    "description": "A raw image",
    "type": "object",
    "properties": {
        "timestamp": _TIME,
        "frame_id": {"type": "string"},
        "width": {"type": "integer", "minimum": 0},
        "height": {"type": "integer", "minimum": 0},
        "encoding": {"type": "string"},
        "step": {"type": "integer", "minimum": 0},
        "data": {"type": "string", "contentEncoding": "base64"},
    },
})
IMU_SCHEMA = orjson.dumps({
    "title": IMU_SCHEMA_NAME,
    "description": "One IMU sample of an imu-d6f entry: capture time, acceleration (m/s^2), angular velocity (rad/s)",
    "type": "object",
    "properties": {
        "timestamp": _TIME,
        "frame_id": {"type": "string"},
        "linear_acceleration": _VECTOR,
        "angular_velocity": _VECTOR,
    },
})


def image_format(data: bytes) -> str | None:
    """`jpeg` or `png` when the bytes are one, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


def entry_times(entry_id: str) -> tuple[int, int]:
    """(log time in ns, sequence) for an entry id: its milliseconds in ns plus the sequence number
    (below a million), and the sequence number (capped to 32 bits)."""
    ms, _, seq = entry_id.partition("-")
    seq_n = int(seq or 0)
    return int(ms) * NS_PER_MS + min(seq_n, NS_PER_MS - 1), min(seq_n, MAX_SEQUENCE)


def _stamp(ns: int) -> dict:
    return {"sec": ns // NS_PER_S, "nsec": ns % NS_PER_S}


def _seconds_stamp(t: float) -> dict:
    """A time in seconds as {sec, nsec} (the fraction on its own: no float rounding of the whole);
    a NaN, negative or absurd time is 0."""
    if not (0 <= t < 1e11):
        return {"sec": 0, "nsec": 0}
    sec = int(t)
    return {"sec": sec, "nsec": min(NS_PER_S - 1, round((t - sec) * NS_PER_S))}


def compressed_image(sid: str, log_time: int, data: bytes, fmt: str) -> bytes:
    """A `foxglove.CompressedImage` JSON message holding the image bytes."""
    return orjson.dumps({"timestamp": _stamp(log_time), "frame_id": sid,
                         "data": base64.b64encode(data).decode(), "format": fmt})


def raw_image(sid: str, log_time: int, data: bytes, width: int, height: int) -> bytes:
    """A `foxglove.RawImage` JSON message of a 16UC1 (uint16 little-endian) image."""
    return orjson.dumps({"timestamp": _stamp(log_time), "frame_id": sid, "width": width, "height": height,
                         "encoding": "16UC1", "step": width * 2, "data": base64.b64encode(data).decode()})


def imu_samples(sid: str, data: bytes) -> list[bytes]:
    """One `ptgstore.Imu` JSON message per whole `<d6f` sample of an entry (a trailing part is ignored)."""
    out = []
    size = layouts.IMU_SAMPLE.size
    for offset in range(0, len(data) - size + 1, size):
        t, ax, ay, az, gx, gy, gz = layouts.IMU_SAMPLE.unpack_from(data, offset)
        out.append(orjson.dumps({"timestamp": _seconds_stamp(t), "frame_id": sid,
                                 "linear_acceleration": {"x": ax, "y": ay, "z": az},
                                 "angular_velocity": {"x": gx, "y": gy, "z": gz}}))
    return out


def inferred_schema(value, depth: int = 0) -> dict:
    """A JSON schema describing `value` (a sample entry), bounded in depth and width."""
    if depth >= INFERRED_DEPTH:
        return {}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, (int, float)):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        return {"type": "array", "items": inferred_schema(value[0], depth + 1) if value else {}}
    if isinstance(value, dict):
        fields = list(value.items())[:INFERRED_FIELDS]
        return {"type": "object", "properties": {str(k): inferred_schema(v, depth + 1) for k, v in fields}}
    return {}


@dataclass(frozen=True)
class Format:
    """How a stream's entries appear as a Foxglove channel."""

    kind: str  # image | depth | imu | json | raw, and image.pb | depth.pb (foxglove_protobuf.variant)
    encoding: str
    schema_name: str
    schema: str
    schema_encoding: str | None = None
    width: int = 0
    height: int = 0

    def channel(self, channel_id: int, topic: str) -> dict:
        """The channel as an `advertise` message lists it."""
        out = {"id": channel_id, "topic": topic, "encoding": self.encoding, "schemaName": self.schema_name,
               "schema": self.schema}
        if self.schema_encoding is not None:
            out["schemaEncoding"] = self.schema_encoding
        return out


IMAGE = Format("image", "json", IMAGE_SCHEMA_NAME, IMAGE_SCHEMA.decode(), "jsonschema")
IMU = Format("imu", "json", IMU_SCHEMA_NAME, IMU_SCHEMA.decode(), "jsonschema")
RAW = Format("raw", RAW_ENCODING, "", "")


def classify(sid: str, meta: dict, newest_type: str | None, newest: bytes | None) -> Format:
    """The format of a stream, from its metadata's `layout`, else its newest entry's content type
    (`image/jpeg`, `image/png` or None) or bytes (None when not read or there is none)."""
    layout = meta.get(layouts.LAYOUT_KEY)
    if layout == layouts.DEPTH_U16_MM:
        width, height = layouts.depth_size(meta)
        return Format("depth", "json", RAW_IMAGE_SCHEMA_NAME, RAW_IMAGE_SCHEMA.decode(), "jsonschema", width, height)
    if layout == layouts.IMU_D6F:
        return IMU
    if newest_type in ("image/jpeg", "image/png") or (newest is not None and image_format(newest)):
        return IMAGE
    if newest is not None and newest[:1] == b"{":
        try:
            sample = orjson.loads(newest)
        except orjson.JSONDecodeError:
            return RAW
        if isinstance(sample, dict):
            schema = {"title": sid, **inferred_schema(sample)}
            return Format("json", "json", sid, orjson.dumps(schema).decode(), "jsonschema")
    return RAW


def payloads(fmt: Format, sid: str, entry_id: str, data: bytes) -> list[bytes]:
    """The message payloads of one entry on a channel of format `fmt` (one, or one per IMU sample)."""
    kind = fmt.kind
    if kind == "image":
        return [compressed_image(sid, entry_times(entry_id)[0], data, image_format(data) or "")]
    if kind == "depth":
        return [raw_image(sid, entry_times(entry_id)[0], data, fmt.width, fmt.height)]
    if kind == "imu":
        return imu_samples(sid, data)
    return [data]
