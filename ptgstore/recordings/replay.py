"""Replay pacing, in one place: recorded entries become due at their recorded intervals.

Used by the server's replay socket (entries into the store) and by `ptgstore replay FILE`
(entries through the push protocol): both iterate `paced(messages, speed)`.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path
from typing import AsyncIterator, Iterable, Iterator

import orjson

from .mcapmeta import channel_metadata
from .mcapread import Message, off_loop

READ_AHEAD_ENTRIES = 256
READ_AHEAD_BYTES = 4 * 1024 * 1024
MAX_BATCH = 64  # entries due together that go out as one batch...
MAX_BATCH_BYTES = 4 * 1024 * 1024  # ... of at most this many bytes (or one larger entry)


class Pacer:
    """When recorded moments are due: the recorded time since the first one, divided by `speed`,
    after the wall-clock moment of the first one. `speed` None: everything is due at once."""

    def __init__(self, speed: float | None):
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be positive, not {speed}")
        self.speed = speed
        self.origin: tuple[int, float] | None = None

    def delay(self, log_time: int) -> float:
        """Seconds until an entry recorded at `log_time` (ns) is due (0 or less: now)."""
        if self.speed is None:
            return 0.0
        if self.origin is None:
            self.origin = (log_time, time.monotonic())
        recorded, wall = self.origin
        return wall + (log_time - recorded) / 1e9 / self.speed - time.monotonic()


def _read_ahead(messages: Iterator[Message]) -> deque[Message]:
    out: deque[Message] = deque()
    size = 0
    for message in messages:
        out.append(message)
        size += len(message.data)
        if len(out) >= READ_AHEAD_ENTRIES or size >= READ_AHEAD_BYTES:
            break
    return out


async def paced(messages: Iterator[Message], speed: float | None) -> AsyncIterator[list[Message]]:
    """Batches of messages as they fall due. The files are read in a thread, one bounded read ahead
    of the batch being sent (unless that holds large entries: then the next read waits for it), so
    that reading seldom holds the pace up and at most two bounded reads are in memory."""
    pacer = Pacer(speed)
    batch: list[Message] = []
    size = 0
    reading: asyncio.Future | None = asyncio.ensure_future(off_loop(_read_ahead, messages))
    try:
        while reading is not None:
            ahead = await reading
            if not ahead:
                break
            small = sum(len(m.data) for m in ahead) < READ_AHEAD_BYTES
            reading = asyncio.ensure_future(off_loop(_read_ahead, messages)) if small else None
            while ahead:
                message = ahead.popleft()  # (each message is let go of once sent)
                wait = pacer.delay(message.log_time)
                if wait > 0.0005 or len(batch) >= MAX_BATCH or size + len(message.data) > MAX_BATCH_BYTES:
                    if batch:
                        yield batch
                        batch, size = [], 0
                    wait = pacer.delay(message.log_time)
                    if wait > 0:
                        await asyncio.sleep(wait)
                batch.append(message)
                size += len(message.data)
            if reading is None:  # large entries: sent (and let go of) before the next are read
                if batch:
                    yield batch
                    batch, size = [], 0
                del message
                reading = asyncio.ensure_future(off_loop(_read_ahead, messages))
        if batch:
            yield batch
    finally:
        if reading is not None:
            reading.cancel()


def recorded_streams(files: Iterable[Path]) -> dict[str, tuple[dict, int | None]]:
    """Each recorded stream's metadata and `max_len` as its channel metadata keeps them (the newest
    file's), for the streams a replay creates. Files of earlier versions kept no `max_len`: None."""
    out: dict[str, tuple[dict, int | None]] = {}
    for topic, metadata in channel_metadata(files).items():
        try:
            meta = orjson.loads(metadata["ptgstore.meta"]) if "ptgstore.meta" in metadata else {}
            max_len = int(metadata["ptgstore.max_len"]) if "ptgstore.max_len" in metadata else None
        except ValueError:
            continue  # written by another tool: nothing to restore
        if isinstance(meta, dict):
            out[topic] = (meta, max_len)
    return out


async def restore_streams(store, targets: dict[str, str], recorded: dict[str, tuple[dict, int | None]]) -> None:
    """Give each target stream that does not exist yet its recorded stream's metadata and `max_len`
    (a long recording replayed at full speed is not trimmed to the default retention)."""
    for sid, target in targets.items():
        meta, max_len = recorded.get(sid, ({}, None))
        if not meta and max_len is None or await store.info(target) is not None:
            continue
        await store.set_meta(target, {**meta, **({"max_len": max_len} if max_len else {})})


def durations(stats: dict[str, dict]) -> dict[str, float]:
    """Seconds between first and last entry of each stream, from an info object's streams."""
    out = {}
    for sid, s in stats.items():
        first, last = s.get("first-entry"), s.get("last-entry")
        out[sid] = (int(last.split("-")[0]) - int(first.split("-")[0])) / 1000 if first and last else 0.0
    return out


class Progress:
    """What a replay reports: entries sent per stream since the last report, streams still going,
    each stream's recorded duration and how far into it the replay is (seconds)."""

    def __init__(self, stats: dict[str, dict], sids: list[str]):
        self.durations = {sid: d for sid, d in durations(stats).items() if sid in sids}
        self.firsts = {sid: int(stats[sid]["first-entry"].split("-")[0]) for sid in sids
                       if sid in stats and stats[sid].get("first-entry")}
        self.active = {sid for sid in sids if sid in self.firsts}  # a stream that got nothing has nothing to replay
        self.updates: dict[str, int] = {}
        self.current: dict[str, float] = {sid: 0.0 for sid in sids}
        self.lasts = {sid: stats[sid].get("last-entry") for sid in sids if sid in stats}
        self.skipped: dict[str, int] = {}  # entries left out (over the message limit), per stream

    def sent(self, message: Message) -> None:
        sid = message.sid
        self.updates[sid] = self.updates.get(sid, 0) + 1
        ms = message.log_time // 1_000_000
        self.current[sid] = (ms - self.firsts.get(sid, ms)) / 1000
        if message.entry_id == self.lasts.get(sid):
            self.active.discard(sid)

    def report(self) -> dict:
        out = {"updates": self.updates, "active": sorted(self.active), "durations": self.durations,
               "current": dict(self.current), "skipped": dict(self.skipped)}
        self.updates = {}
        return out
