"""`ptgstore simulate`: a headset's synthetic camera (JPEG), depth and IMU streams, each pushed at its
rate on a pusher of its own that carries on across interruptions (`ptgstore.client.pushing`): a server
restart costs a line on stderr, not the run."""
from __future__ import annotations

import asyncio
import random
import struct
import sys
import time
from array import array
from typing import TYPE_CHECKING, Sequence

from tqdm import tqdm

# no client module at import time: `ptgstore serve` builds the same parser, and sets websockets up first
from .commands import _progress, _summary
from .layouts import DEPTH_HEIGHT, DEPTH_WIDTH, IMU_SAMPLE, depth_meta, imu_meta

if TYPE_CHECKING:
    from .client import AsyncClient

# at most one line about reconnecting per this many seconds (the sensors' pushers reconnect within a
# second or so of each other after a restart)
RECONNECT_NOTICE_S = 10.0

class Sensor:
    """A synthetic sensor: its stream, its rate, how it makes one entry and its layout's metadata."""

    def __init__(self, stream_id: str, hz: float, make, meta: dict | None = None):
        self.stream_id = stream_id
        self.hz = hz
        self.make = make
        self.meta = meta
        self.entries = 0
        self.bytes = 0
        self.reconnects = self.resends = 0  # of its pusher


def camera_frames() -> list[bytes]:
    """The 640x360 baseline JPEG test-pattern frames shipped in the package (tools/make_sim_frames.py)."""
    from importlib.resources import files

    folder = files("ptgstore") / "simdata"
    return [folder.joinpath(f"camera-{n}.jpg").read_bytes() for n in range(4)]


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The JPEG with a comment segment (COM) after its JFIF header: still the same image, unique bytes."""
    comment = text.encode()
    segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
    app0_end = 4 + struct.unpack(">H", jpeg[4:6])[0]  # SOI, then APP0 (JFIF) with its length
    return jpeg[:app0_end] + segment + jpeg[app0_end:]


def depth_frames(count: int = 16) -> list[bytes]:
    """Depth images: little-endian uint16 millimetres, row-major, 320x288 (a HoloLens 2 long-throw frame).

    The scene: a wall 2-2.6 m away sloping left to right, a floor coming closer towards the bottom
    rows, and a box 0.9 m away that slides across; 0 (no reading) on the outermost pixels."""
    rows = []
    for y in range(DEPTH_HEIGHT):
        floor = max(0, y - 180) * 12
        row = array("H", (0 if x in (0, DEPTH_WIDTH - 1) else 2000 + 2 * x - floor for x in range(DEPTH_WIDTH)))
        rows.append(row)
    frames = []
    for i in range(count):
        left = 20 + i * (DEPTH_WIDTH - 100) // count
        image = array("H")
        for y, row in enumerate(rows):
            if 90 <= y < 190:
                row = row[:left] + array("H", [900] * 60) + row[left + 60:]
            image.extend(row)
        if sys.byteorder != "little":
            image.byteswap()
        frames.append(image.tobytes())
    return frames


def _sensors(args) -> list[Sensor]:
    rng = random.Random(args.seed)
    jpegs = camera_frames()
    depths = depth_frames()

    def camera(i: int) -> bytes:
        return with_comment(jpegs[i % len(jpegs)], f"ptgstore simulate {args.device} frame {i}")

    def depth_frame(i: int) -> bytes:
        return depths[i % len(depths)]

    def imu(_frame: int) -> bytes:  # every source takes the frame number; IMU samples carry the clock instead
        now = time.time()
        return b"".join(IMU_SAMPLE.pack(now + k / args.imu_hz, rng.gauss(0, 0.05), 9.81 + rng.gauss(0, 0.05),
                                        rng.gauss(0, 0.05), *(rng.gauss(0, 0.01) for _ in range(3)))
                        for k in range(args.imu_batch))

    prefix = args.device + ":"
    return [Sensor(prefix + "main", args.camera_hz, camera),
            Sensor(prefix + "depthlt", args.depth_hz, depth_frame, depth_meta()),
            Sensor(prefix + "imu", args.imu_hz / args.imu_batch, imu, imu_meta())]


async def _run_sensor(client: AsyncClient, sensor: Sensor, deadline: float) -> None:
    """Push one entry per tick on the sensor's own socket until the deadline; late ticks do not pile up
    (while the pusher waits out an interruption, the sensor makes no frames)."""
    if sensor.hz <= 0:
        return
    period = 1 / sensor.hz
    if sensor.meta:
        # readers (Foxglove) learn the layout; the first contact: a server not there is said at once
        await client.update(sensor.stream_id, sensor.meta)
    async with client.pusher() as pusher:
        tick = time.monotonic()
        while tick < deadline:
            data = sensor.make(sensor.entries)
            await pusher.push(sensor.stream_id, [data])
            sensor.entries += 1
            sensor.bytes += len(data)
            sensor.reconnects, sensor.resends = pusher.summary.reconnects, pusher.summary.resends
            tick = max(tick + period, time.monotonic())
            await asyncio.sleep(max(0.0, min(tick, deadline) - time.monotonic()))


async def _watch(tasks: Sequence[asyncio.Future], sensors: list[Sensor], started: float, duration: float) -> None:
    """Show the progress until every sensor is done; one line when the pushers had to reconnect. The
    first sensor that fails stops the others, and its error is raised (once, without tracebacks)."""
    reconnects, noticed = 0, 0.0
    try:
        with _progress(total=round(duration, 1), unit=" s", desc="simulate",
                       bar_format="{l_bar}{bar}| {n:.1f}/{total} s") as bar:
            while not all(task.done() for task in tasks):
                done, _ = await asyncio.wait(tasks, timeout=0.5, return_when=asyncio.FIRST_EXCEPTION)
                if any(not task.cancelled() and task.exception() for task in done):
                    break
                bar.n = round(min(time.monotonic() - started, duration), 1)
                bar.refresh()
                now_reconnects = sum(s.reconnects for s in sensors)
                if now_reconnects > reconnects and time.monotonic() - noticed >= RECONNECT_NOTICE_S:
                    noticed = time.monotonic()
                    bar.write(f"simulate: the connection was interrupted; reconnected and carrying on "
                              f"({now_reconnects} reconnects so far)", file=sys.stderr)
                reconnects = now_reconnects
    finally:
        for task in tasks:  # (an error, a Ctrl-C: the other sensors stop too)
            task.cancel()
    # every outcome retrieved (no "Task exception was never retrieved" tracebacks); the first error raised
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            raise outcome


async def simulate(client: AsyncClient, args) -> int:
    """Push synthetic camera (JPEG), depth and IMU streams at headset rates for --duration seconds."""
    sensors = _sensors(args)
    started = time.monotonic()
    deadline = started + args.duration
    tasks = [asyncio.ensure_future(_run_sensor(client, sensor, deadline)) for sensor in sensors]
    await _watch(tasks, sensors, started, args.duration)
    elapsed = time.monotonic() - started
    for sensor in sensors:
        print(f"{sensor.stream_id}: {sensor.entries} entries, {tqdm.format_sizeof(sensor.bytes, 'B', 1024)}, "
              f"{sensor.entries / elapsed:.1f} Hz, {sensor.reconnects} reconnects, "
              f"{sensor.resends} batches resent", file=sys.stderr)
    _summary("simulated", sum(s.entries for s in sensors), sum(s.bytes for s in sensors), started)
    print(f"connection: {sum(s.reconnects for s in sensors)} reconnects, "
          f"{sum(s.resends for s in sensors)} batches resent", file=sys.stderr)
    return 0
