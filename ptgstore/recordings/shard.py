"""Writing one shard of the active recording, from its committed cursors, until it stops.

Shard k's segments are `part-<k>-000001.mcap`, `part-<k>-000002.mcap`, ... each a complete,
indexed MCAP file. A segment is written as `part-<k>-<n>.<token>.tmp`, finished and fsynced, then
committed in Redis (cursors advanced, only while holding the shard's lease), then renamed. After a
crash, committed temporary files are renamed and uncommitted ones deleted: their entries are
written again from Redis, so each entry is in the recording once. When the stop is reached the
shard is marked done; the process that marks the last shard done writes `info.json` and ends the
recording.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time

import orjson

from ..framing import parse_entry_id
from ..private import private_dir
from .catalogue import build_info, parse_segment_name, segment_name, temporary_name, write_info
from .mcapfiles import SegmentWriter, add_to_stats, fsync_dir
from .recorder import LeaseLost, ShardTask, shard_of
from .state import now_iso

log = logging.getLogger("ptgstore.recorder")

STATE_EVERY = 0.25  # seconds between reads of the recording state (a stop request)
SCAN_EVERY = 1.0  # seconds between looks for new streams when recording every stream
READ_BLOCK_MS = 200
READ_BUDGET = 16 * 1024 * 1024  # bytes of entries the reads of one process may bring at once
DEFAULT_SIZE = 64 * 1024  # the size assumed of the entries of a stream not read yet
FINISH_GRACE = 2.0  # seconds every shard may be done before any holder ends the recording itself


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


def _after(entry_id: str, cursor: str) -> bool:
    return parse_entry_id(entry_id) > parse_entry_id(cursor)


def _all_done(state: dict) -> bool:
    return all(state.get(f"done:{k}") for k in range(state["shards"]))


class ShardWriting:
    """Writing one shard of one active recording."""

    def __init__(self, holder: ShardTask, state: dict):
        self.holder = holder
        self.recorder = holder.recorder
        self.states = holder.recorder.states
        self.shard = holder.shard
        self.state = state
        self.id = state["id"]
        self.dir = self.recorder.root / self.id
        self.segment = int(state.get(f"segment:{self.shard}", 1))
        self.writer: SegmentWriter | None = None
        self.opened_at = 0.0
        self.metas: dict[str, dict] = {}
        self.changed: set[str] = set()
        self.new_gaps: list[dict] = []  # found since the last commit, committed with the next segment
        self.largest: dict[str, int] = {}  # per stream, the largest entry seen: sizes its reads
        self.all_done_at: float | None = None

    def mine(self, sid: str) -> bool:
        return shard_of(sid, self.state["shards"], self.recorder.keys) == self.shard

    async def run(self) -> None:
        cursors, self.stats, self.gaps, segments = await self.states.progress()
        self.cursors = {sid: cursor for sid, cursor in cursors.items() if self.mine(sid)}
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
        """After a crash: rename this shard's committed temporary files, delete uncommitted ones."""
        private_dir(self.dir)
        for path in self.dir.glob("part-*"):
            parsed = parse_segment_name(path.name)
            if parsed is None or parsed[0] != self.shard:
                continue
            _, number, token = parsed
            if token is None:
                if number >= self.segment:
                    path.unlink()  # renamed but never committed: its entries are written again
            elif number < self.segment and segments.get(f"{self.shard}:{number}") == token:
                os.replace(path, self.dir / segment_name(self.shard, number))
            else:
                path.unlink()
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
            if self.state.get(f"done:{self.shard}"):
                if await self._wait_for_the_others():
                    return
                continue
            stop = self.state["stop"]
            if stop is not None:
                for sid in stop:
                    if self.mine(sid):
                        self.cursors.setdefault(sid, "0-0")
            elif every and now - last_scan >= SCAN_EVERY:
                for sid in await self.recorder.recordable_streams(SCAN_EVERY):
                    if self.mine(sid):
                        self.cursors.setdefault(sid, "0-0")
                last_scan = now
            if self.holder.leaving:
                await self._roll()
                return
            pending = {sid: c for sid, c in self.cursors.items()
                       if stop is None or (sid in stop and sid not in exhausted and _after(stop[sid], c))}
            if stop is not None and not pending:
                await self._complete()
                continue
            entries = await self.states.read_blocking(connection, pending, self._counts(pending),
                                                      READ_BLOCK_MS) if pending else []
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

    def _counts(self, pending: dict[str, str]) -> dict[str, int]:
        """How many entries of each stream one read may bring: an equal share of the process's
        budget (READ_BUDGET over the shards it writes) for each stream, in entries of the largest
        size the stream had (a power of two, at least 1, at most `read_count`): an IMU stream of
        small entries at a high rate is read hundreds at a time, a camera stream a few."""
        share = READ_BUDGET // max(1, len(self.recorder.held)) // max(1, len(pending))
        counts = {}
        for sid in pending:
            count = max(1, min(self.recorder.read_count, share // self.largest.get(sid, DEFAULT_SIZE)))
            counts[sid] = 1 << (count.bit_length() - 1)
        return counts

    async def _wait_for_the_others(self) -> bool:
        """This shard is done: wait for the others (True: leave, the lease given back or the
        recording ended). When every shard is done and nobody ended the recording (its finisher
        died in between), end it."""
        if self.holder.leaving:
            return True
        if _all_done(self.state):
            if self.all_done_at is None:
                self.all_done_at = time.monotonic()
            if time.monotonic() - self.all_done_at >= FINISH_GRACE:
                await self._finish()
                return True
        await asyncio.sleep(STATE_EVERY)
        return False

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
            self.stats.setdefault(sid, {})["index"] = start + len(ids) - 1
            if lost > 0:
                gap = {"sid": sid, "after": cursors[sid], "next": ids[0], "lost": lost}
                self.gaps.append(gap)
                self.new_gaps.append(gap)
                log.warning("recording %s: stream %s lost %d entries between %s and %s (trimmed before they "
                            "were written: the recorder fell behind)", self.id, sid, lost, cursors[sid], ids[0])

    async def _write(self, entries: list) -> None:
        if self.writer is None:
            path = self.dir / temporary_name(self.shard, self.segment, self.states.token)
            self.writer = await _disk(SegmentWriter, path)
            self.opened_at = time.monotonic()
            self.metas.clear()
        unknown = sorted({sid for sid, _, _ in entries} - set(self.metas))
        if unknown:
            for sid, (meta, max_len) in (await self.states.metas(unknown)).items():
                # kept whole (strings and JSON values told apart) with the retention, for replay
                self.metas[sid] = {**meta, "ptgstore.meta": orjson.dumps(meta).decode(),
                                   "ptgstore.max_len": str(max_len)}
        # in time order across the streams of one read: readers reorder a file within a bounded window
        entries = sorted(entries, key=lambda entry: parse_entry_id(entry[1]))
        await _disk(self.writer.write, entries, self.metas)
        for sid, entry_id, data in entries:
            self.largest[sid] = max(self.largest.get(sid, 0), len(data))
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
        if not await self.states.commit(self.shard, self.segment, cursors, stats, self.new_gaps,
                                        self.recorder.writer):
            await asyncio.to_thread(writer.path.unlink, True)
            raise LeaseLost()
        self.changed.clear()
        self.new_gaps.clear()
        await _disk(os.replace, writer.path, self.dir / segment_name(self.shard, self.segment))
        await _disk(fsync_dir, self.dir)
        self.segment += 1

    async def _complete(self) -> None:
        """Everything of this shard up to the stop is written: mark it done; the last shard done
        ends the recording."""
        await self._roll()
        done = await self.states.shard_done(self.shard)
        if done == 0:
            raise LeaseLost()
        self.state[f"done:{self.shard}"] = "1"
        if done == 2:
            await self._finish()

    async def _finish(self) -> None:
        _, stats, gaps, _ = await self.states.progress()
        writers = await self.states.writers()
        info = await asyncio.to_thread(build_info, self.id, self.dir, stats, gaps, started=self.state.get("started"),
                                       stopped=now_iso(), streams_requested=self.state["streams"], writers=writers)
        await _disk(write_info, self.dir, info)
        await self.states.finish(self.id)
        log.info("recording %s finished: %d entries in %d files, written by %d processes", self.id,
                 sum(s.get("count", 0) for s in stats.values()), len(info["files"]), len(writers))

    async def _fail(self, exc: OSError) -> None:
        """A write failed (a full disk): the recording stops with the reason; the store goes on."""
        reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "write failed"
        error = f"recording stopped: {reason}: {exc}"
        log.error("recording %s: %s", self.id, error)
        if self.writer is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.writer.abandon)
            self.writer = None
        _, committed, gaps, _ = await self.states.progress()
        writers = await self.states.writers()
        info = build_info(self.id, self.dir, committed, gaps, started=self.state.get("started"),
                          stopped=now_iso(), error=error, writers=writers)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(write_info, self.dir, info)
        await self.states.finish(self.id, error=error)
