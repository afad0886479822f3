"""One reader per followed stream: a blocking XREAD on its own Redis connection and a bounded
buffer of the newest entries, shared by every pull of the stream in this process (see hub.py).
"""
from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import fanout
from .backoff import Backoff
from .framing import format_entry_id, parse_entry_id
from .store import StoreError, StoreUnavailable

if TYPE_CHECKING:
    from .hub import Hub, Subscription

log = logging.getLogger("ptgstore.hub")

READ_BATCH = 512
BLOCK_MS = 5000

class Follower:
    """Follows one stream: one blocking reader, a bounded buffer of the newest entries.

    The buffer only ever holds entries of one generation of the stream (its `epoch`, bumped by
    each delete): every wait reads the epoch and the stream's length with the entries, and a
    delete heard of on the deletions channel, or a newer epoch seen by a socket, makes it forget
    the buffer (`invalidate`) and read the stream's state again before anything more is served.
    """

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
        self.epoch = 0  # the generation of the stream the buffer belongs to (valid once ready)
        self.added: int | None = None  # entries the stream was ever given, up to `newest` (Redis 7)
        self.gap_marks: deque[tuple[int, int]] = deque()  # buffered ids right after entries trimmed unseen
        self.invalidations = 0
        self.ready = asyncio.Event()
        self._waiting = False  # in the blocking read (which `invalidate` interrupts)
        self.stopping = False  # a cancellation is then for good, never an interruption
        self._interrupted = False
        # what the sockets at one cursor get next, made once for all of them (they mostly move together)
        self.shared: dict[tuple[tuple[int, int], int], "Delivery"] = {}
        self.plain: dict[tuple[tuple[int, int], int], "Delivery"] = {}  # the same without gap notices
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"ptgstore-follow-{sid}")

    def invalidate(self) -> None:
        """Forget the buffer (the stream was deleted, or may have been): nothing is served from
        memory until the stream's state has been read again."""
        self.invalidations += 1
        self.ready.clear()
        self._forget()
        if self._waiting and not self._interrupted:
            self._interrupted = True
            self.task.cancel()

    def stop(self) -> None:
        """End the follower (its last socket left, or the server stops)."""
        self.stopping = True
        self.task.cancel()

    def _forget(self) -> None:
        self.entries.clear()
        self.ids.clear()
        self.gap_marks.clear()
        self.shared.clear()
        self.plain.clear()
        self.buffered_bytes = 0

    def _wake(self) -> None:
        for waiter in self.waiters:
            waiter.set()

    async def _run(self) -> None:
        store = self.hub.store
        tail = store.tail(self.sid)
        backoff = Backoff()
        try:
            while True:
                try:
                    if not self.ready.is_set():
                        # deletes are heard of from before the state is read: none falls in between
                        await self.hub.watching.wait()
                        asked = self.invalidations
                        (state,) = await store.states([self.sid])
                        if self.invalidations != asked:
                            continue  # invalidated while asking: the answer may predate the delete
                        self._start(*state)
                    self._waiting = True
                    try:
                        records, epoch, length = await store.follow(
                            tail, self.sid, format_entry_id(self.newest), READ_BATCH, BLOCK_MS)
                    except asyncio.CancelledError:
                        # interrupted by `invalidate` (and by nothing else): read the state again
                        if self.stopping or not self._interrupted:
                            raise
                        uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python 3.11+
                        if uncancel is not None and uncancel() > 0:
                            raise
                        self._interrupted = False
                        continue
                    finally:
                        self._waiting = False
                    if epoch != self.epoch:
                        self.invalidate()  # deleted (and perhaps re-created) since the buffer began
                        continue
                    mark = None
                    if records and length <= len(records):
                        # Redis keeps nothing up to `newest`: trimming may have taken unseen entries too
                        records, mark, later = await self._count_unseen(records)
                        length += later
                    elif self.added is not None:
                        self.added += len(records)
                    backoff.reset()
                except (StoreUnavailable, StoreError) as exc:
                    # kept alive through outages and odd keys alike: its sockets wait, then resume
                    pause = backoff.failed()
                    log.warning("follower %s: redis unavailable (%s); retrying in %.2f s", self.sid, exc, pause)
                    await asyncio.sleep(pause)
                    continue
                if records and self.ready.is_set():  # (not when invalidated meanwhile: read again first)
                    self._append(records, length, mark)
                    await asyncio.sleep(0)  # the woken sockets send before the next read goes out
        finally:
            # freed now, not when the garbage collector breaks the follower <-> task cycle
            self._forget()
            await tail.disconnect()

    def _start(self, epoch: int, newest: str, added: int | None) -> None:
        self._forget()
        self.epoch = epoch
        self.added = added
        self.floor = self.newest = parse_entry_id(newest)
        self.ready.set()
        self._wake()  # sockets waiting for this follower (or reset by the new epoch) go on

    async def _count_unseen(self, records):
        """Whether entries added after `newest` were trimmed before they could be read: compares
        what the stream was ever given with what was read (one more round trip, only when Redis
        keeps nothing older than what was just read, and only for sockets that asked for gaps).
        Returns the records (plus any added meanwhile), the id after the gap (or None) and how many
        were added meanwhile."""
        if not any(reader.gaps for reader in self.readers):
            self.added = None  # uncounted until a socket asks for gaps
            return records, None, 0
        added, later = await self.hub.store.added_after(self.sid, records[-1][0])
        unseen = 0 if added is None or self.added is None else added - self.added - len(records) - len(later)
        self.added = added
        return records + later, (parse_entry_id(records[0][0]) if unseen > 0 else None), len(later)

    def _append(self, records, length: int, mark: tuple[int, int] | None) -> None:
        hub = self.hub
        self.shared.clear()
        self.plain.clear()
        if mark is not None:
            self.gap_marks.append(mark)
        for entry_id, data in records:
            pair = parse_entry_id(entry_id)
            self.ids.append(pair)
            self.entries.append((entry_id, data))
            self.buffered_bytes += len(data)
            self.newest = pair
        # entries Redis no longer keeps (trimmed) leave memory: the buffer holds at most the newest
        # `length` (an entry added after that count only makes this keep one more)
        while len(self.ids) > length:
            self.floor = self.ids.popleft()
            self.buffered_bytes -= len(self.entries.popleft()[1])
        while self.ids and (len(self.ids) > hub.buffer_entries or self.buffered_bytes > hub.buffer_bytes):
            self.floor = self.ids.popleft()
            self.buffered_bytes -= len(self.entries.popleft()[1])
        if self.readers:
            # what every reader has passed leaves memory; a socket starting further back reads Redis
            slowest = min(reader.cursors[i] for reader, i in self.readers.items())
            while self.ids and self.ids[0] <= slowest:
                self.floor = self.ids.popleft()
                self.buffered_bytes -= len(self.entries.popleft()[1])
        while self.gap_marks and self.gap_marks[0] <= self.floor:
            self.gap_marks.popleft()
        fanout.deliver(self)  # straight to the sockets waiting that take it, then wake the others

    def after(self, cursor: tuple[int, int], count: int) -> list[tuple[str, bytes]] | None:
        """Up to `count` buffered entries after `cursor`; None when the buffer no longer reaches back
        (or is being read again). A delivery stops before a gap mark: the next one starts with it."""
        if cursor < self.floor or not self.ready.is_set():
            return None
        start = bisect.bisect_right(self.ids, cursor)
        end = min(start + count, len(self.entries))
        if self.gap_marks and start < end:
            k = bisect.bisect_right(self.gap_marks, self.ids[start])
            if k < len(self.gap_marks) and self.gap_marks[k] <= self.ids[end - 1]:
                end = bisect.bisect_left(self.ids, self.gap_marks[k], start, end)
        return [self.entries[i] for i in range(start, end)]

    def gap_before(self, entry_id: str) -> bool:
        """Whether entries right before this buffered one were trimmed before they could be read."""
        if not self.gap_marks:
            return False
        pair = parse_entry_id(entry_id)
        k = bisect.bisect_left(self.gap_marks, pair)
        return k < len(self.gap_marks) and self.gap_marks[k] == pair

    def delivery_after(self, cursor: tuple[int, int], count: int, notices: bool = True) -> "Delivery | None":
        """The entries after `cursor` as a Delivery shared by every socket at that cursor (not to be
        changed), with the gap notice due before them (unless `notices` is false); None when the
        buffer no longer reaches back."""
        key = (cursor, count)
        delivery = self.shared.get(key)
        if delivery is None:
            buffered = self.after(cursor, count)
            if buffered is None:
                return None
            delivery = Delivery([(self.sid, entry_id, data) for entry_id, data in buffered])
            delivery.last = parse_entry_id(buffered[-1][0]) if buffered else cursor
            if buffered and self.gap_before(buffered[0][0]):
                delivery.gaps = [gap_notice(self.sid, cursor, buffered[0][0])]
            self.shared[key] = delivery
        if delivery.gaps and not notices:
            plain = self.plain.get(key)
            if plain is None:
                plain = self.plain[key] = Delivery(delivery.entries, [], delivery.last)
            return plain
        return delivery

    def newest_entry(self) -> tuple[str, bytes] | None:
        return self.entries[-1] if self.entries and self.ready.is_set() else None


def gap_notice(sid: str, cursor: tuple[int, int], oldest: str) -> dict:
    return {"gap": {"sid": sid, "after": format_entry_id(cursor), "oldest": oldest}}


@dataclass(eq=False)
class Delivery:
    """What one pull socket gets next: gap notices, then entries `(sid, entry id, bytes)`.

    Compared (and hashed) by identity: one shared by many sockets is the same object for each, and
    the routes key what they make of it once (their wire form, `fanout.made`) by that object."""

    entries: list = field(default_factory=list)
    gaps: list = field(default_factory=list)
    last: tuple[int, int] | None = None  # of a shared delivery: the cursor after it
