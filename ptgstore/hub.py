"""Per-process readers that wait on Redis once per stream and fan entries out to pull sockets.

A `Follower` holds one Redis connection in a blocking single-key XREAD for one stream
and keeps the newest entries in a bounded buffer. A `Subscription` (one per pull
socket) only keeps a cursor per stream: it is served from the buffer while it keeps
up, and from a plain range read on the shared pool when it has fallen behind, so a
slow socket costs no memory and never stalls the others.
"""
from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

from redis import exceptions as rexc

from .framing import BEGINNING, NEWEST, format_entry_id, parse_entry_id
from .store import Store, StoreUnavailable

log = logging.getLogger("ptgstore.hub")

READ_BATCH = 512
BLOCK_MS = 5000
READY_TIMEOUT = 10.0


class Follower:
    """Follows one stream: one blocking reader, a bounded buffer of the newest entries."""

    def __init__(self, hub: "Hub", sid: str):
        self.hub = hub
        self.sid = sid
        self.refs = 0
        self.waiters: set[asyncio.Event] = set()
        self.readers: dict["Subscription", int] = {}  # subscription -> index of this stream in its cursors
        self.ids: deque[tuple[int, int]] = deque()  # buffered entry ids, oldest first
        self.entries: deque[tuple[str, bytes]] = deque()  # (entry id, bytes), in step with `ids`
        self.buffered_bytes = 0
        self.floor: tuple[int, int] = (0, 0)  # the buffer holds every entry after this id
        self.newest: tuple[int, int] = (0, 0)  # the newest id seen
        self.ready = asyncio.Event()
        # what the sockets at one cursor get next, made once for all of them (they mostly move together)
        self.shared: dict[tuple[tuple[int, int], int], "Delivery"] = {}
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"ptgstore-follow-{sid}")

    async def _run(self) -> None:
        store = self.hub.store
        connection = store.blocking_connection()
        backoff = 0.05
        try:
            while True:
                try:
                    if not self.ready.is_set():
                        (start,) = await store.last_ids([self.sid])
                        self.floor = self.newest = parse_entry_id(start)
                        self.ready.set()
                    records = await store.read_blocking(connection, self.sid, format_entry_id(self.newest),
                                                        READ_BATCH, BLOCK_MS)
                    backoff = 0.05
                except (rexc.RedisError, OSError, StoreUnavailable) as exc:
                    # kept alive through outages and odd keys alike: its sockets wait, then resume
                    log.warning("follower %s: redis unavailable (%s); retrying in %.2f s", self.sid, exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
                if records:
                    self._append(records)
                    await asyncio.sleep(0)  # the woken sockets send before the next read goes out
        finally:
            # freed now, not when the garbage collector breaks the follower <-> task cycle
            self.entries.clear()
            self.ids.clear()
            self.buffered_bytes = 0
            await connection.disconnect()

    def _append(self, records) -> None:
        hub = self.hub
        self.shared.clear()
        for entry_id, data in records:
            pair = parse_entry_id(entry_id)
            self.ids.append(pair)
            self.entries.append((entry_id, data))
            self.buffered_bytes += len(data)
            self.newest = pair
        while self.ids and (len(self.ids) > hub.buffer_entries or self.buffered_bytes > hub.buffer_bytes):
            self.floor = self.ids.popleft()
            self.buffered_bytes -= len(self.entries.popleft()[1])
        if self.readers:
            # what every reader has passed leaves memory; a socket starting further back reads Redis
            slowest = min(reader.cursors[i] for reader, i in self.readers.items())
            while self.ids and self.ids[0] <= slowest:
                self.floor = self.ids.popleft()
                self.buffered_bytes -= len(self.entries.popleft()[1])
        for waiter in self.waiters:
            waiter.set()

    def after(self, cursor: tuple[int, int], count: int) -> list[tuple[str, bytes]] | None:
        """Up to `count` buffered entries after `cursor`; None when the buffer no longer reaches back."""
        if cursor < self.floor:
            return None
        start = bisect.bisect_right(self.ids, cursor)
        return [self.entries[i] for i in range(start, min(start + count, len(self.entries)))]

    def delivery_after(self, cursor: tuple[int, int], count: int) -> "Delivery | None":
        """The entries after `cursor` as a Delivery shared by every socket at that cursor (not to be
        changed); None when the buffer no longer reaches back."""
        key = (cursor, count)
        delivery = self.shared.get(key)
        if delivery is None:
            buffered = self.after(cursor, count)
            if buffered is None:
                return None
            delivery = Delivery([(self.sid, entry_id, data) for entry_id, data in buffered])
            delivery.last = parse_entry_id(buffered[-1][0]) if buffered else cursor
            self.shared[key] = delivery
        return delivery

    def newest_entry(self) -> tuple[str, bytes] | None:
        return self.entries[-1] if self.entries else None


@dataclass
class Delivery:
    """What one pull socket gets next: gap notices, then entries `(sid, entry id, bytes)`."""

    entries: list = field(default_factory=list)
    gaps: list = field(default_factory=list)
    last: tuple[int, int] | None = None  # of a shared delivery: the cursor after it
    encoded: dict = field(default_factory=dict)  # its wire form by header codec, made once


class Subscription:
    """One pull socket's position in each of its streams."""

    def __init__(self, hub: "Hub", sids: Sequence[str], cursors: Sequence[str], *, gaps: bool = False):
        self.hub = hub
        self.sids = list(sids)
        self.cursors = [parse_entry_id(c) for c in cursors]
        self.gaps = gaps
        self.wake = asyncio.Event()
        self.closed = False
        self.timed_out = False
        self.followers: list[Follower] = []

    async def __aenter__(self) -> "Subscription":
        try:
            for sid in self.sids:
                follower = self.hub._follow(sid)
                self.followers.append(follower)
                follower.waiters.add(self.wake)
                follower.readers[self] = len(self.followers) - 1
            for follower in self.followers:
                await asyncio.wait_for(follower.ready.wait(), READY_TIMEOUT)
        except asyncio.TimeoutError:
            self._leave()
            raise StoreUnavailable("store unavailable: cannot start following the streams") from None
        except BaseException:
            self._leave()
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._leave()

    def _leave(self) -> None:
        for follower in self.followers:
            follower.waiters.discard(self.wake)
            follower.readers.pop(self, None)
            self.hub._unfollow(follower)
        self.followers = []

    def close(self) -> None:
        """Stop waiting (the socket went away)."""
        self.closed = True
        self.wake.set()

    def _expire(self) -> None:
        self.timed_out = True
        self.close()

    async def next(self, count: int, *, latest: bool = False, timeout: float | None = None) -> Delivery | None:
        """The next delivery, waiting for new entries; None once closed or timed out (`timed_out`)."""
        timer = None
        if timeout is not None:
            timer = asyncio.get_running_loop().call_later(timeout, self._expire)
        try:
            backoff = 0.05
            while not self.closed:
                self.wake.clear()
                try:
                    delivery = self._shared(count, latest) or await self._collect(count, latest)
                except StoreUnavailable as exc:
                    # an open pull waits out an outage like its followers do: its cursors
                    # only move after a read succeeds, so nothing is skipped or repeated
                    log.warning("pull of %s: %s; retrying in %.2f s", "+".join(self.sids), exc, backoff)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
                backoff = 0.05
                if delivery.entries or delivery.gaps:
                    return delivery
                await self.wake.wait()
            return None
        finally:
            if timer is not None:
                timer.cancel()

    def _shared(self, count: int, latest: bool) -> Delivery | None:
        """One stream, followed in the buffer: the delivery every socket at this cursor shares."""
        if len(self.followers) != 1 or latest:
            return None
        shared = self.followers[0].delivery_after(self.cursors[0], count)
        if shared is not None:
            self.cursors[0] = shared.last
        return shared

    async def _collect(self, count: int, latest: bool) -> Delivery:
        delivery = Delivery()
        behind = []  # (index, stream id, cursor) to read from Redis
        for i, (sid, follower, cursor) in enumerate(zip(self.sids, self.followers, self.cursors)):
            if cursor >= follower.newest:
                continue
            if latest:
                newest = follower.newest_entry()
                if newest is not None:
                    delivery.entries.append((sid, *newest))
                    continue
                behind.append((i, sid, NEWEST, 1))
                continue
            buffered = follower.after(cursor, count)
            if buffered is None:
                behind.append((i, sid, format_entry_id(cursor), count))
            else:
                delivery.entries += [(sid, entry_id, data) for entry_id, data in buffered]
        if behind:
            if self.gaps:
                delivery.gaps = await self._find_gaps(behind)
            delivery.entries += await self.hub.store.read([(sid, c, n) for _, sid, c, n in behind])
        if len(self.sids) > 1:
            delivery.entries.sort(key=lambda entry: parse_entry_id(entry[1]))
        for sid, entry_id, _ in delivery.entries:
            i = self.sids.index(sid) if len(self.sids) > 1 else 0
            self.cursors[i] = max(self.cursors[i], parse_entry_id(entry_id))
        return delivery

    async def _find_gaps(self, behind) -> list[dict]:
        gaps = []
        for i, sid, cursor, _ in behind:
            if cursor in (NEWEST, BEGINNING):
                continue
            oldest = await self.hub.store.first_id(sid)
            if oldest is not None and parse_entry_id(oldest) > self.cursors[i]:
                gaps.append({"gap": {"sid": sid, "after": cursor, "oldest": oldest}})
        return gaps

    def sync_to(self, index: int) -> None:
        """Move every cursor up to stream `index`'s (time_sync_id)."""
        clock = self.cursors[index]
        self.cursors = [max(c, clock) for c in self.cursors]


class Hub:
    """The followers of one process, created on demand and stopped with their last subscriber."""

    def __init__(self, store: Store, *, buffer_entries: int = 1024, buffer_bytes: int = 64 * 1024 * 1024):
        self.store = store
        self.buffer_entries = buffer_entries
        self.buffer_bytes = buffer_bytes
        self.followers: dict[str, Follower] = {}
        self._asked: dict[str, list[asyncio.Future]] = {}  # `$` questions waiting for the next round trip
        self._answering: asyncio.Task | None = None

    async def last_ids(self, sids: Sequence[str]) -> list[str]:
        """What `$` means now for each stream (`Store.last_ids`).

        Sockets opening together share round trips (one at a time), so a thousand pullers
        connecting at once do not each take a Redis connection. Each question is answered
        by a round trip sent after it was asked, so `$` is never older than the question.
        """
        loop = asyncio.get_running_loop()
        answers = []
        for sid in sids:
            answers.append(loop.create_future())
            self._asked.setdefault(sid, []).append(answers[-1])
        if self._answering is None or self._answering.done():
            self._answering = loop.create_task(self._answer(), name="ptgstore-last-ids")
        return list(await asyncio.gather(*answers))

    async def _answer(self) -> None:
        while self._asked:
            asked, self._asked = self._asked, {}
            try:
                ids = await self.store.last_ids(list(asked))
            except Exception as exc:  # noqa: BLE001 - handed to every asker, who raises it
                for waiting in asked.values():
                    for answer in waiting:
                        if not answer.done():
                            answer.set_exception(exc)
                continue
            for waiting, entry_id in zip(asked.values(), ids):
                for answer in waiting:
                    if not answer.done():
                        answer.set_result(entry_id)

    def subscribe(self, sids: Sequence[str], cursors: Sequence[str], *, gaps: bool = False) -> Subscription:
        """A subscription (use with `async with`) from concrete cursors (entry ids)."""
        return Subscription(self, sids, cursors, gaps=gaps)

    def _follow(self, sid: str) -> Follower:
        follower = self.followers.get(sid)
        if follower is None:
            follower = self.followers[sid] = Follower(self, sid)
        follower.refs += 1
        return follower

    def _unfollow(self, follower: Follower) -> None:
        follower.refs -= 1
        if follower.refs <= 0 and self.followers.get(follower.sid) is follower:
            del self.followers[follower.sid]
            follower.task.cancel()

    async def close(self) -> None:
        """Stop every follower (server shutdown)."""
        tasks = [f.task for f in self.followers.values()]
        self.followers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
