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

from .backoff import Backoff
from . import fanout
from .framing import NEWEST, format_entry_id, parse_entry_id
from .questions import Questions
from .store import Store, StoreError, StoreUnavailable

log = logging.getLogger("ptgstore.hub")

READ_BATCH = 512
BLOCK_MS = 5000
READY_TIMEOUT = 10.0


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

    def delivery_after(self, cursor: tuple[int, int], count: int) -> "Delivery | None":
        """The entries after `cursor` as a Delivery shared by every socket at that cursor (not to be
        changed), with the gap notice due before them; None when the buffer no longer reaches back."""
        key = (cursor, count)
        delivery = self.shared.get(key)
        if delivery is None:
            buffered = self.after(cursor, count)
            if buffered is None:
                return None
            delivery = Delivery([(self.sid, entry_id, data) for entry_id, data in buffered])
            delivery.last = parse_entry_id(buffered[-1][0]) if buffered else cursor
            if buffered and self.gap_before(buffered[0][0]):
                delivery.gaps = [_gap(self.sid, cursor, buffered[0][0])]
            self.shared[key] = delivery
        return delivery

    def newest_entry(self) -> tuple[str, bytes] | None:
        return self.entries[-1] if self.entries and self.ready.is_set() else None


def _gap(sid: str, cursor: tuple[int, int], oldest: str) -> dict:
    return {"gap": {"sid": sid, "after": format_entry_id(cursor), "oldest": oldest}}


@dataclass
class Delivery:
    """What one pull socket gets next: gap notices, then entries `(sid, entry id, bytes)`."""

    entries: list = field(default_factory=list)
    gaps: list = field(default_factory=list)
    last: tuple[int, int] | None = None  # of a shared delivery: the cursor after it
    encoded: dict = field(default_factory=dict)  # its wire form by header codec, made once


class Subscription:
    """One pull socket's position in each of its streams."""

    def __init__(self, hub: "Hub", sids: Sequence[str], cursors: Sequence[str], *, gaps: bool = False,
                 epochs: Sequence[int] | None = None):
        self.hub = hub
        self.sids = list(sids)
        self.cursors = [parse_entry_id(c) for c in cursors]
        # the generation of each stream the cursors belong to (read when the socket opened)
        self.epochs: list[int | None] = list(epochs) if epochs is not None else [None] * len(self.sids)
        # `0` at the start means "from the oldest kept": no gap then, only once the pull has read
        self.fresh = [c == (0, 0) for c in self.cursors]
        self._reread: list[int | None] = [None] * len(self.sids)  # follower invalidations this socket asked for
        self.gaps = gaps
        self.wake = asyncio.Event()
        self.closed = False
        self.timed_out = False
        self.followers: list[Follower] = []
        self.direct: fanout.Direct | None = None  # how the follower may write to the socket itself
        self.parked = False  # waiting in `next` for new entries (the follower may then write them)

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
        self._in_step()
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

    def _in_step(self) -> bool:
        """Whether every follower is ready and of the generation of this socket's cursors. A follower
        behind the socket's generation is made to read the stream again; a cursor of an older
        generation (the stream was deleted since) starts again from the beginning of the new stream."""
        in_step = True
        for i, follower in enumerate(self.followers):
            if not follower.ready.is_set():
                in_step = False
            elif (epoch := self.epochs[i]) is None or epoch < follower.epoch:
                if epoch is not None:
                    self.cursors[i] = (0, 0)
                    self.fresh[i] = True
                self.epochs[i] = follower.epoch
            elif epoch > follower.epoch:
                if self._reread[i] == follower.invalidations:
                    # read again since this socket asked, and still older: Redis lost its data
                    # (flushed or restarted empty), so the stream is new here too
                    self.cursors[i], self.fresh[i], self.epochs[i] = (0, 0), True, follower.epoch
                else:
                    follower.invalidate()
                    self._reread[i] = follower.invalidations
                    in_step = False
        return in_step

    async def confirm(self) -> None:
        """Check now, in Redis, that no stream was deleted since its follower last looked (before a
        delivery the client asked for: an ack). Shared with the other sockets asking meanwhile."""
        epochs = await self.hub.epochs(self.sids)
        for follower, epoch in zip(self.followers, epochs):
            if epoch > follower.epoch and follower.ready.is_set():
                # then `_in_step` waits for it, and starts the cursor again (one reading again
                # already is not interrupted: many acks at once must not keep it from finishing)
                follower.invalidate()

    async def next(self, count: int, *, latest: bool = False, timeout: float | None = None,
                   confirm: bool = False) -> Delivery | None:
        """The next delivery, waiting for new entries; None once closed or timed out (`timed_out`).
        With `confirm`, the streams' generations are checked in Redis first (`confirm`)."""
        timer = None
        if timeout is not None:
            timer = asyncio.get_running_loop().call_later(timeout, self._expire)
        try:
            backoff = Backoff()
            while not self.closed:
                self.wake.clear()
                try:
                    if confirm:
                        await self.confirm()
                        confirm = False
                    if not self._in_step():
                        await self.wake.wait()  # a follower reads its stream again, then wakes us
                        continue
                    delivery = self._shared(count, latest) or await self._collect(count, latest)
                except StoreUnavailable as exc:
                    # an open pull waits out an outage like its followers do: its cursors
                    # only move after a read succeeds, so nothing is skipped or repeated
                    pause = backoff.failed()
                    log.warning("pull of %s: %s; retrying in %.2f s", "+".join(self.sids), exc, pause)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), pause)
                    continue
                backoff.reset()
                if True in self.fresh:
                    self.fresh = [False] * len(self.sids)
                if delivery.entries or delivery.gaps:
                    return delivery
                self.parked = True
                try:
                    await self.wake.wait()
                finally:
                    self.parked = False
            return None
        finally:
            if timer is not None:
                timer.cancel()

    def _shared(self, count: int, latest: bool) -> Delivery | None:
        """One stream, followed in the buffer: the delivery every socket at this cursor shares."""
        if len(self.followers) != 1 or latest:
            return None
        shared = self.followers[0].delivery_after(self.cursors[0], count)
        if shared is None or shared.last is None:  # (a shared delivery always knows its cursor)
            return None
        self.cursors[0] = shared.last
        if shared.gaps and (self.fresh[0] or not self.gaps):
            # the same entries without the notice (made once per socket, only at a gap)
            return Delivery(shared.entries, [], shared.last, shared.encoded)
        return shared

    async def _collect(self, count: int, latest: bool) -> Delivery:
        delivery = Delivery()
        behind = []  # (index, stream id, cursor, count) to read from Redis
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
                if buffered and self.gaps and not self.fresh[i] and follower.gap_before(buffered[0][0]):
                    delivery.gaps.append(_gap(sid, cursor, buffered[0][0]))
                delivery.entries += [(sid, entry_id, data) for entry_id, data in buffered]
        if behind:
            checked = [(sid, c, n) for i, sid, c, n in behind
                       if self.gaps and not latest and not self.fresh[i] and c != NEWEST]
            unchecked = [(sid, c, n) for i, sid, c, n in behind
                         if not (self.gaps and not latest and not self.fresh[i] and c != NEWEST)]
            if checked:
                entries, oldest = await self.hub.store.read_noting_gaps(checked)
                delivery.gaps += [_gap(sid, parse_entry_id(c), oldest[sid]) for sid, c, _ in checked if sid in oldest]
                delivery.entries += entries
            if unchecked:
                delivery.entries += await self.hub.store.read(unchecked)
        if len(self.sids) > 1:
            delivery.entries.sort(key=lambda entry: parse_entry_id(entry[1]))
        for sid, entry_id, _ in delivery.entries:
            i = self.sids.index(sid) if len(self.sids) > 1 else 0
            self.cursors[i] = max(self.cursors[i], parse_entry_id(entry_id))
        return delivery

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
        self._states = Questions(store.states, "ptgstore-stream-states")
        self._epochs = Questions(store.epochs, "ptgstore-epochs")
        self._watcher: asyncio.Task | None = None
        self.watching = asyncio.Event()  # set once the deletions channel is listened to

    async def states(self, sids: Sequence[str]) -> list[tuple[int, str]]:
        """`(epoch, what `$` means now)` for each stream (`Store.states`).

        Sockets opening together share round trips (one at a time), so a thousand pullers
        connecting at once do not each take a Redis connection. Each question is answered
        by a round trip sent after it was asked, so `$` is never older than the question.
        """
        return [(epoch, last) for epoch, last, _ in await self._states.ask(sids)]

    async def last_ids(self, sids: Sequence[str]) -> list[str]:
        """What `$` means now for each stream (see `states`)."""
        return [last for _, last in await self.states(sids)]

    async def epochs(self, sids: Sequence[str]) -> list[int]:
        """Each stream's generation, read after this was asked (shared like `states`)."""
        return await self._epochs.ask(sids)

    def subscribe(self, sids: Sequence[str], cursors: Sequence[str], *, gaps: bool = False,
                  epochs: Sequence[int] | None = None) -> Subscription:
        """A subscription (use with `async with`) from concrete cursors (entry ids), of the streams'
        generations `epochs` (from `states`, read before the cursors were resolved)."""
        return Subscription(self, sids, cursors, gaps=gaps, epochs=epochs)

    def _deleted(self, sid: str | None) -> None:
        """A stream was deleted through some process (None: listening (again), any may have been)."""
        if sid is None:
            if not self.watching.is_set():
                self.watching.set()  # the first time: followers read their streams' state from now on
                return
            for follower in self.followers.values():
                follower.invalidate()
        elif sid in self.followers:
            self.followers[sid].invalidate()

    def _follow(self, sid: str) -> Follower:
        if self._watcher is None:
            self.watching = asyncio.Event()
            self._watcher = asyncio.get_running_loop().create_task(
                self.store.watch_deletes(self._deleted), name="ptgstore-deletions")
        follower = self.followers.get(sid)
        if follower is None:
            follower = self.followers[sid] = Follower(self, sid)
        follower.refs += 1
        return follower

    def _unfollow(self, follower: Follower) -> None:
        follower.refs -= 1
        if follower.refs <= 0 and self.followers.get(follower.sid) is follower:
            del self.followers[follower.sid]
            follower.stop()
            if not self.followers and self._watcher is not None:
                self._watcher.cancel()  # nothing buffered: deletes matter again with the next follower
                self._watcher = None

    async def close(self) -> None:
        """Stop every follower (server shutdown)."""
        tasks = [f.task for f in self.followers.values()]
        for follower in self.followers.values():
            follower.stop()
        if self._watcher is not None:
            self._watcher.cancel()
            tasks.append(self._watcher)
            self._watcher = None
        self.followers.clear()
        await asyncio.gather(*tasks, return_exceptions=True)
