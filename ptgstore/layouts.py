"""The documented sensor layouts: how a stream's metadata says what its entries hold.

`ptgstore simulate` writes them, the Foxglove endpoint decodes them. An entry stays opaque
bytes in the store; the metadata key `layout` only tells readers how to look at them:

- `depth-u16-mm`: a depth image, little-endian uint16 millimetres, row-major, `width` x `height`
  (metadata keys, default 320 x 288: a HoloLens 2 long-throw frame); 0 means no reading.
- `imu-d6f`: IMU samples of 32 bytes each, little-endian `<d6f`: capture time (seconds since the
  epoch, float64), accelerometer x y z (m/s^2), gyroscope x y z (rad/s), float32; an entry holds
  one or more samples.
"""
from __future__ import annotations

import struct

LAYOUT_KEY = "layout"
DEPTH_U16_MM = "depth-u16-mm"
IMU_D6F = "imu-d6f"
DEPTH_WIDTH, DEPTH_HEIGHT = 320, 288
IMU_SAMPLE = struct.Struct("<d6f")  # capture time, accelerometer xyz (m/s^2), gyroscope xyz (rad/s)


def depth_meta(width: int = DEPTH_WIDTH, height: int = DEPTH_HEIGHT) -> dict:
    """The metadata of a `depth-u16-mm` stream."""
    return {LAYOUT_KEY: DEPTH_U16_MM, "width": width, "height": height}


def imu_meta() -> dict:
    """The metadata of an `imu-d6f` stream."""
    return {LAYOUT_KEY: IMU_D6F}


def depth_size(meta: dict) -> tuple[int, int]:
    """(width, height) of a depth stream from its metadata (the defaults for missing or odd values)."""
    width, height = meta.get("width", DEPTH_WIDTH), meta.get("height", DEPTH_HEIGHT)
    if not (isinstance(width, int) and isinstance(height, int) and 0 < width <= 65535 and 0 < height <= 65535):
        return DEPTH_WIDTH, DEPTH_HEIGHT
    return width, height
