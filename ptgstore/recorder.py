"""The recorder: follows the recorded streams in Redis and writes them to MCAP segment files.

Every API process runs a `Recorder`; exactly one of them writes at a time, the holder of a
lease in Redis (a key with a short TTL that its holder renews). When that process dies the
lease expires and another process takes over within seconds, from the committed cursors.

A recording is a directory of segments `part-000001.mcap`, `part-000002.mcap`, ... each a
complete, indexed MCAP file. A segment is written as `part-N.<token>.tmp`, finished and
fsynced, then committed in Redis (cursors advanced, only while holding the lease), then
renamed. After a crash, committed temporary files are renamed and uncommitted ones deleted:
their entries are written again from Redis, so each entry is in the recording once.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from datetime import timedelta
from pathlib import Path

import orjson

from .connections import RedisError
from .framing import parse_entry_id
from .mcapfiles import SEGMENT_SUFFIX, SegmentWriter, add_to_stats, fsync_dir, summarize
from .mcapread import Limits
from .private import open_private, private_dir
from .recording_store import RecordingStore, now_iso
from .store import Store, StoreUnavailable, entry_time_iso

log = logging.getLogger("ptgstore.recorder")

LEASE_TTL_MS = 3000
RENEW_EVERY = 1.0
ACQUIRE_EVERY = 0.5  # seconds between looks for an active recording (or a lease to take over)
STATE_EVERY = 0.25  # seconds between reads of the recording state (a stop request)
SCAN_EVERY = 1.0  # seconds between looks for new streams when recording every stream
READ_BLOCK_MS = 200
READ_BUDGET = 16 * 1024 * 1024  # bytes of entries one read may bring (at least one entry per stream)
INFO_FILE = "info.json"
HIDDEN_FILE = ".hidden"


class LeaseLost(Exception):
    """Another process holds the recorder lease now."""


class DiskError(Exception):
    """Writing a recording's files failed (a full disk, a read-only or vanished directory)."""

    def __init__(self, error: OSError):
        super().__init__(error)
        self.error = error


async def _disk(function, *args):
    """Run a file operation in a thread; its OSError becomes a DiskError."""
    try:
        return await asyncio.to_thread(function, *args)
    except OSError as exc:
        raise DiskError(exc) from exc


def segment_name(number: int) -> str:
    return f"part-{number:06d}{SEGMENT_SUFFIX}"


def segment_files(rec_dir: Path) -> list[Path]:
    """The finished segment files (and any uploaded MCAP files) of a recording, in order."""
    if not rec_dir.is_dir():
        return []
    return sorted(p for p in rec_dir.iterdir() if p.suffix == SEGMENT_SUFFIX and p.is_file())


def _seconds_between(first: str | None, last: str | None) -> float | None:
    if not first or not last:
        return None
    return (int(last.split("-")[0]) - int(first.split("-")[0])) / 1000


def build_info(rec_id: str, rec_dir: Path, stats: dict[str, dict], gaps: list[dict], **extra) -> dict:
    """The info object of a recording from its per-stream stats, gaps and files."""
    streams = {}
    stats = {sid: {k: v for k, v in s.items() if k != "index"} for sid, s in stats.items() if "count" in s}
    for sid, s in sorted(stats.items()):
        streams[sid] = {**s, "first-entry-time": entry_time_iso(s["first-entry"]), "last-entry-time": entry_time_iso(s["last-entry"]),
                        "duration_secs": _seconds_between(s["first-entry"], s["last-entry"]),
                        "gaps": sum(1 for g in gaps if g["sid"] == sid),
                        "lost": sum(g.get("lost", 0) for g in gaps if g["sid"] == sid)}
    firsts = [s["first-entry"] for s in stats.values()]
    lasts = [s["last-entry"] for s in stats.values()]
    first = min(firsts, key=parse_entry_id) if firsts else None
    last = max(lasts, key=parse_entry_id) if lasts else None
    files = segment_files(rec_dir)
    size = sum(f.stat().st_size for f in files)
    seconds = _seconds_between(first, last)
    return {
        "name": rec_id, "streams": streams,
        "files": [f.name for f in files], "size": size, "size_mb": size / 1024**2,
        "first-entry": first, "last-entry": last,
        "first-entry-time": entry_time_iso(first), "last-entry-time": entry_time_iso(last),
        "duration": str(timedelta(seconds=seconds)) if seconds is not None else None,
        "duration_secs": seconds, "gaps": len(gaps), "lost": sum(g.get("lost", 0) for g in gaps),
        "gap_list": gaps,
        "hidden": (rec_dir / HIDDEN_FILE).exists(), **extra,
    }


def write_info(rec_dir: Path, info: dict) -> None:
    """Keep the info object beside the segments (written whole, then renamed)."""
    tmp = rec_dir / (INFO_FILE + ".tmp")
    with open_private(tmp) as file:
        file.write(orjson.dumps({k: v for k, v in info.items() if k not in ("hidden", "active")},
                                option=orjson.OPT_INDENT_2))
    os.replace(tmp, rec_dir / INFO_FILE)


def info_from_files(rec_id: str, rec_dir: Path, limits: Limits | None = None) -> dict:
    """Info of a recording without a kept info object (an upload): read from its MCAP files."""
    return build_info(rec_id, rec_dir, summarize(segment_files(rec_dir), limits), [])


class Recorder:
    """The recorder of one API process: competes for the lease and, holding it, records."""

    def __init__(self, store: Store, root: Path, segment_seconds: float, segment_bytes: int,
                 read_count: int = 16):
        self.states = RecordingStore(store)
        self.root = Path(root)
        self.segment_seconds = segment_seconds
        self.segment_bytes = segment_bytes
        self.read_count = read_count
        self.closing = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._complained = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="ptgstore-recorder")

    async def close(self, timeout: float = 10.0) -> None:
        """Finish the segment in progress (so that a restart rewrites little) and give up the lease."""
        self.closing.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            except Exception:
                log.exception("recorder failed while closing")

    async def _supervise(self) -> None:
        """While a recording is active, compete for the lease and, holding it, record; Redis holds
        no recorder key at all while nothing is recorded."""
        while not self.closing.is_set():
            try:
                if await self._active() and await self.states.acquire(LEASE_TTL_MS):
                    log.info("recorder: this process holds the recorder lease")
                    try:
                        await self._hold()
                    finally:
                        await self.states.release()
                self._complained = False
            except (StoreUnavailable, OSError, ConnectionError, RedisError) as exc:
                if not self._complained:
                    log.warning("recorder: %s", exc)
                    self._complained = True
            except LeaseLost:
                log.warning("recorder: lease lost to another process")
            except Exception:
                log.exception("recorder failed; retrying")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.closing.wait(), ACQUIRE_EVERY)

    async def _active(self) -> dict | None:
        state = await self.states.state()
        return state if state is not None and state.get("status") in ("recording", "stopping") else None

    async def _hold(self) -> None:
        renewer = asyncio.ensure_future(self._renew())
        worker = asyncio.ensure_future(self._work())
        try:
            done, _ = await asyncio.wait({renewer, worker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (renewer, worker):
                task.cancel()
            await asyncio.gather(renewer, worker, return_exceptions=True)
        for task in done:
            task.result()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            if not await self.states.renew(LEASE_TTL_MS):
                raise LeaseLost()

    async def _work(self) -> None:
        """Record while a recording is active (one after another), then give the lease back."""
        while not self.closing.is_set():
            state = await self._active()
            if state is None:
                return
            await Recording(self, state).run()


def _after(entry_id: str, cursor: str) -> bool:
    return parse_entry_id(entry_id) > parse_entry_id(cursor)


class Recording:
    """Writing one active recording, from its committed cursors, until it stops."""

    def __init__(self, recorder: Recorder, state: dict):
        self.recorder = recorder
        self.states = recorder.states
        self.state = state
        self.id = state["id"]
        self.dir = recorder.root / self.id
        self.segment = state["segment"]
        self.writer: SegmentWriter | None = None
        self.opened_at = 0.0
        self.metas: dict[str, dict] = {}
        self.changed: set[str] = set()
        self.new_gaps: list[dict] = []  # found since the last commit, committed with the next segment
        self.largest = 64 * 1024  # the largest entry seen: sizes the reads to READ_BUDGET

    async def run(self) -> None:
        self.cursors, self.stats, self.gaps, segments = await self.states.progress()
        connection = self.states.tail()
        try:
            await _disk(self._recover, segments)
            await self._follow(connection)
        except DiskError as exc:
            await self._fail(exc.error)
        finally:
            if self.writer is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self.writer.abandon)
            await connection.disconnect()

    def _recover(self, segments: dict[str, str]) -> None:
        """After a crash: rename committed temporary files, delete uncommitted ones."""
        private_dir(self.dir)
        for path in self.dir.glob("part-*.tmp"):
            number_text, _, token = path.name[len("part-"):-len(".tmp")].partition(".")
            number = int(number_text) if number_text.isdigit() else -1
            if number < self.segment and segments.get(str(number)) == token:
                os.replace(path, self.dir / segment_name(number))
            else:
                path.unlink()
        for path in segment_files(self.dir):
            if path.name.startswith("part-") and path.name[5:11].isdigit() and int(path.name[5:11]) >= self.segment:
                path.unlink()  # renamed but never committed: its entries are written again
        fsync_dir(self.dir)

    async def _follow(self, connection) -> None:
        every = self.state["streams"] is None
        last_state = last_scan = 0.0
        exhausted: set[str] = set()
        while True:
            now = time.monotonic()
            if now - last_state >= STATE_EVERY:
                state = await self.states.state()
                if state is None or state["id"] != self.id:
                    return  # finished elsewhere
                self.state, last_state = state, now
            stop = self.state["stop"]
            if stop is not None:
                for sid in stop:
                    self.cursors.setdefault(sid, "0-0")
            elif every and now - last_scan >= SCAN_EVERY:
                for sid in await self.states.recordable_streams():
                    self.cursors.setdefault(sid, "0-0")
                last_scan = now
            if self.recorder.closing.is_set():
                await self._roll()
                return
            pending = {sid: c for sid, c in self.cursors.items()
                       if stop is None or (sid in stop and sid not in exhausted and _after(stop[sid], c))}
            if stop is not None and not pending:
                await self._complete()
                return
            count = max(1, min(self.recorder.read_count, READ_BUDGET // (max(1, len(pending)) * self.largest)))
            entries = await self.states.read_blocking(connection, pending, count, READ_BLOCK_MS) if pending else []
            if not pending:
                await asyncio.sleep(READ_BLOCK_MS / 1000)
            if stop is not None:
                got = {sid for sid, _, _ in entries}
                exhausted |= set(pending) - got  # trimmed or deleted since the stop: nothing more to read
                entries = [e for e in entries if not _after(e[1], stop[e[0]])]
            if entries:
                await self._check_gaps(pending, entries)
                await self._write(entries)
            if self.writer is not None and (time.monotonic() - self.opened_at >= self.recorder.segment_seconds
                                            or self.writer.bytes >= self.recorder.segment_bytes):
                await self._roll()

    async def _check_gaps(self, cursors: dict[str, str], entries: list) -> None:
        """Count entries trimmed before they were read, from Redis's count of entries ever added to
        each stream (a stream's entries are numbered in the order they were added; trimming removes
        a prefix). The recorder knows the number of the entry at its cursor; the batch just read is
        contiguous; the entries before the first kept one are the trimmed ones."""
        batches: dict[str, list[str]] = {}
        for sid, entry_id, _ in entries:
            batches.setdefault(sid, []).append(entry_id)
        heads = await self.states.heads(list(batches))
        for sid, ids in batches.items():
            head = heads[sid]
            known = self.stats.get(sid, {}).get("index", 0)
            trimmed = head["added"] - head["length"]
            first = head["first"]
            gone = sum(1 for i in ids if first is None or _after(first, i))  # read, then trimmed
            if gone or ids[0] == first:
                start = trimmed + 1 - gone  # the number of the batch's first entry
            else:
                start = known + 1  # the head has not reached the cursor: nothing trimmed unread
            lost = start - 1 - known
            self._set_index(sid, start + len(ids) - 1)
            if lost > 0:
                gap = {"sid": sid, "after": cursors[sid], "next": ids[0], "lost": lost}
                self.gaps.append(gap)
                self.new_gaps.append(gap)
                log.warning("recording %s: stream %s lost %d entries between %s and %s (trimmed before they "
                            "were written: the recorder fell behind)", self.id, sid, lost, cursors[sid], ids[0])

    def _set_index(self, sid: str, index: int) -> None:
        self.stats.setdefault(sid, {})["index"] = index

    async def _write(self, entries: list) -> None:
        if self.writer is None:
            path = self.dir / f"part-{self.segment:06d}.{self.states.token}.tmp"
            self.writer = await _disk(SegmentWriter, path)
            self.opened_at = time.monotonic()
            self.metas.clear()
        unknown = sorted({sid for sid, _, _ in entries} - set(self.metas))
        if unknown:
            self.metas.update(await self.states.metas(unknown))
        await _disk(self.writer.write, entries, self.metas)
        for sid, entry_id, data in entries:
            self.largest = max(self.largest, len(data))
            self.cursors[sid] = entry_id
            add_to_stats(self.stats, sid, entry_id, len(data))
            self.changed.add(sid)

    async def _roll(self) -> None:
        """Finish the segment in progress, commit it, and name it."""
        writer, self.writer = self.writer, None
        if writer is None:
            return
        try:
            await _disk(writer.finish)
        except BaseException:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(writer.abandon)
            raise
        cursors = {sid: self.cursors[sid] for sid in self.changed}
        stats = {sid: self.stats[sid] for sid in self.changed}
        if not await self.states.commit(self.segment, cursors, stats, self.new_gaps):
            await asyncio.to_thread(writer.path.unlink, True)
            raise LeaseLost()
        self.changed.clear()
        self.new_gaps.clear()
        final = self.dir / segment_name(self.segment)
        await _disk(os.replace, writer.path, final)
        await _disk(fsync_dir, self.dir)
        self.segment += 1

    async def _complete(self) -> None:
        await self._roll()
        info = build_info(self.id, self.dir, self.stats, self.gaps, started=self.state.get("started"),
                          stopped=now_iso(), streams_requested=self.state["streams"])
        await _disk(write_info, self.dir, info)
        await self.states.finish(self.id)
        log.info("recording %s finished: %d entries in %d files", self.id,
                 sum(s.get("count", 0) for s in self.stats.values()), len(info["files"]))

    async def _fail(self, exc: OSError) -> None:
        """A write failed (a full disk): the recording stops with the reason; the store goes on."""
        reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "write failed"
        error = f"recording stopped: {reason}: {exc}"
        log.error("recording %s: %s", self.id, error)
        if self.writer is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.writer.abandon)
            self.writer = None
        committed = (await self.states.progress())[1]
        info = build_info(self.id, self.dir, committed, self.gaps, started=self.state.get("started"),
                          stopped=now_iso(), error=error)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(write_info, self.dir, info)
        await self.states.finish(self.id, error=error)
