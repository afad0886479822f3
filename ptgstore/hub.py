"""Per-process readers that wait on Redis once per stream and fan entries out to pull sockets.

A `Follower` (follower.py) holds one Redis connection in a blocking single-key XREAD for one
stream and keeps the newest entries in a bounded buffer. A `Subscription` (one per pull socket,
opened with `Hub.open`) only keeps a cursor per stream: it is served from the buffer while it keeps
up, and from a plain range read on the shared pool when it has fallen behind, so a slow socket
costs no memory and never stalls the others.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Sequence

from . import fanout
from .backoff import Backoff
from .follower import Delivery, Follower, gap_notice
from .framing import BEGINNING, NEWEST, NOW, cursor_before, format_entry_id, parse_cursors, parse_entry_id
from .questions import Questions
from .store import Store, StoreUnavailable

log = logging.getLogger("ptgstore.hub")

READY_TIMEOUT = 10.0

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
        # (a socket that did not ask for gap notices, or has read nothing yet, gets the entries without)
        shared = self.followers[0].delivery_after(self.cursors[0], count, self.gaps and not self.fresh[0])
        if shared is None or shared.last is None:  # (a shared delivery always knows its cursor)
            return None
        self.cursors[0] = shared.last
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
                    delivery.gaps.append(gap_notice(sid, cursor, buffered[0][0]))
                delivery.entries += [(sid, entry_id, data) for entry_id, data in buffered]
        if behind:
            checked = [(sid, c, n) for i, sid, c, n in behind
                       if self.gaps and not latest and not self.fresh[i] and c != NEWEST]
            unchecked = [(sid, c, n) for i, sid, c, n in behind
                         if not (self.gaps and not latest and not self.fresh[i] and c != NEWEST)]
            if checked:
                entries, oldest = await self.hub.store.read_noting_gaps(checked)
                delivery.gaps += [gap_notice(sid, parse_entry_id(c), oldest[sid]) for sid, c, _ in checked if sid in oldest]
                delivery.entries += entries
            if unchecked:
                delivery.entries += await self.hub.store.read(unchecked)
        if len(self.sids) > 1:
            delivery.entries.sort(key=lambda entry: parse_entry_id(entry[1]))
            for sid, entry_id, _ in delivery.entries:
                i = self.sids.index(sid)
                self.cursors[i] = max(self.cursors[i], parse_entry_id(entry_id))
        elif delivery.entries:  # one stream's entries come oldest first: its newest is the last
            self.cursors[0] = max(self.cursors[0], parse_entry_id(delivery.entries[-1][1]))
        return delivery

    def newest(self, index: int = 0) -> tuple[int, int]:
        """The newest entry id of stream `index` known here ((0, 0): it never held an entry)."""
        return self.followers[index].newest

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

    async def epochs(self, sids: Sequence[str]) -> list[int]:
        """Each stream's generation, read after this was asked (shared like `states`)."""
        return await self._epochs.ask(sids)

    @contextlib.asynccontextmanager
    async def open(self, sids: Sequence[str], last_entry_id: str | Sequence[str] = NOW, count: int = 1,
                   gaps: bool = False) -> AsyncIterator[Subscription]:
        """A pull of `sids` from `last_entry_id` (`async with hub.open(...) as subscription`), as
        docs/protocol.md says: one cursor per stream (`a+b`, fewer values repeating, or a parsed list),
        `$` fixed now (nothing added after this moment is skipped), `*` just before the newest `count`
        entries, `0`/`-` or an entry id; with `gaps`, notices of entries trimmed past a cursor. The
        streams' generations are read first, with `$` when there is one: entries of a stream deleted
        before now are never served from memory."""
        cursors = parse_cursors(last_entry_id, len(sids)) if isinstance(last_entry_id, str) \
            else list(last_entry_id)
        if NOW in cursors:
            states = await self.states(sids)
            cursors = [now if c == NOW else c for c, (_, now) in zip(cursors, states)]
            epochs = [epoch for epoch, _ in states]
        else:
            epochs = await self.epochs(sids)
        if NEWEST in cursors:
            cursors = await self._before_newest(sids, cursors, count)
        async with Subscription(self, sids, cursors, gaps=gaps, epochs=epochs) as subscription:
            yield subscription

    async def _before_newest(self, sids: Sequence[str], cursors: list[str], count: int) -> list[str]:
        """`*`: just before the newest `count` entries (an empty stream: from its beginning, since
        everything it will ever hold is new)."""
        first: dict[str, str] = {}
        for sid, entry_id, _ in await self.store.read([(sid, NEWEST, count) for sid, c in zip(sids, cursors)
                                                       if c == NEWEST]):
            first.setdefault(sid, entry_id)
        return [c if c != NEWEST else cursor_before(first[sid]) if sid in first else BEGINNING
                for sid, c in zip(sids, cursors)]

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
