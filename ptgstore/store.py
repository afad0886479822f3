"""The streams' domain in Redis: entries, ranges, metadata, info, retention. `Store` is the one
surface; beside this module, the parts it calls:

- `streaminfo.py`: which streams exist, their metadata (retention), info and the summaries;
- `deletions.py`: deletes (each bumps the stream's epoch) and the deletions channel;
- `migration.py`: the key layout of earlier versions, moved at start-up;
- `luascripts.py` and `lua/`: the Lua scripts (the atomic batch add, the summaries);
- `storeerrors.py`: what the store raises.

Connections (kept lanes, the watchdog, packing, cluster routing) are `connections.py`'s; key names
are `keys.py`'s.
"""
from __future__ import annotations

import asyncio
import functools
import time
from typing import Sequence

from . import connections as conn
from . import deletions, migration, streaminfo
from .connections import Connections, ResponseError
from .framing import BEGINNING, LAST_POSSIBLE_ID, NEWEST
from .keys import Keys
from .luascripts import lua, runner
from .replies import entry_time_iso as entry_time_iso  # (re-exported: catalogue.py's import)
from .replies import text as _text
from .storeerrors import CrossGroupBatch, StoreError, StoreUnavailable

FIELD = b"d"
MAX_LEN_FRESH = 1.0  # seconds a stream's max_len is kept in memory
MAX_LEN_CACHE = 10_000  # streams whose max_len is kept

Entry = tuple  # (stream id, entry id, bytes)


def _guarded(method):
    """Turn Redis connection failures into StoreUnavailable, with the reason; report the round trip."""

    op = method.__name__

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return await method(self, *args, **kwargs)
        except conn.UNAVAILABLE as exc:
            raise StoreUnavailable(f"store unavailable: {conn.reason(exc)}".strip()) from exc
        finally:
            if self.on_roundtrip is not None:
                # reported once the caller has moved on (sent its reply): off the latency path
                asyncio.get_running_loop().call_soon(self.on_roundtrip, op, time.perf_counter() - started)

    return wrapper


def _data(fields) -> bytes:
    """The entry bytes of a record's fields (a dict, or the flat list of a raw reply)."""
    if isinstance(fields, dict):
        return fields.get(FIELD, b"")
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == FIELD:
            return fields[i + 1]
    return b""


def _pair(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Store:
    """Entries and metadata of streams in one Redis or one Redis Cluster."""

    def __init__(self, url: str, *, key_prefix: str = "", default_max_len: int = 1000, pool_size: int = 64,
                 timeout: float = 30, cluster: bool = False, group_separator: str = ":"):
        self.default_max_len = default_max_len
        self.connections = Connections(url, cluster=cluster, pool_size=pool_size, timeout=timeout)
        self.cluster = cluster
        self.redis = self.connections.client
        self.keys = Keys(key_prefix, separator=group_separator, tagged=cluster)
        self.key = self.keys.stream  # (bound once: one call less on every entry)
        self._add = self.script(lua("add.lua"))
        self._max_lens: dict[str, tuple[int, float]] = {}  # stream id -> (max_len, read at)
        self.on_roundtrip = None  # called with (store method name, seconds) after each guarded call

    def epoch_key(self, sid: str) -> str:
        """The stream's generation counter, bumped by each delete (in the stream's slot)."""
        return self.keys.epoch(sid)

    def _by_slot(self, items: Sequence, sid_of=lambda item: item) -> list[list]:
        """`items` grouped by the hash slot of their stream (one group on a single Redis), in order."""
        if not self.cluster:
            return [list(items)]
        groups: dict[int, list] = {}
        for item in items:
            groups.setdefault(self.connections.slot(self.key(sid_of(item))), []).append(item)
        return list(groups.values())

    def tail(self, sid: str):
        """A connection of its own for one follower's blocking reads (kept off the pool and lanes)."""
        return self.connections.tail(self.key(sid))

    async def follow(self, tail, sid: str, cursor: str, count: int, block_ms: int):
        """A follower's wait: up to `count` entries `(entry id, bytes)` after `cursor`, waiting up to
        `block_ms` for the first ([] when none came), then in the same round trip (pipelined, run by
        Redis right after the read is served) the stream's generation and length:
        `(records, epoch, length)`. Failures are raised as StoreUnavailable (the follower retries)."""
        key = self.key(sid)
        commands = [("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", key, cursor),
                    ("GET", self.epoch_key(sid)), ("XLEN", key)]
        try:
            reply, epoch, length = await tail.pipelined(commands)
        except (*conn.UNAVAILABLE, ResponseError) as exc:
            raise StoreUnavailable(f"store unavailable: {conn.reason(exc)}") from exc
        if not reply:
            return [], int(epoch or 0), length
        records = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]  # RESP3 or RESP2
        return [(entry_id.decode(), _data(fields)) for entry_id, fields in records], int(epoch or 0), length

    async def close(self) -> None:
        await self.connections.close()

    @_guarded
    async def ping(self) -> bool:
        if self.cluster:
            return bool(await self.redis.ping(target_nodes=self.redis.PRIMARIES))
        return bool(await self.redis.ping())

    # -- writes -------------------------------------------------------------------------------

    def check_batch(self, sids) -> None:
        """On a cluster, refuse a batch over several groups: it could not be stored atomically."""
        if self.cluster:
            groups = {self.keys.group(sid) for sid in sids}
            if len(groups) > 1:
                names = ", ".join(repr(g) if g else "default" for g in sorted(groups)[:3])
                raise CrossGroupBatch(f"a batch must stay in one group (id up to the first "
                                      f"{self.keys.separator!r}); this one spans {names}")

    @_guarded
    async def add(self, entries: Sequence[tuple[str, str, bytes]]) -> list[str]:
        """Store entries `(stream id, id spec, bytes)` all or nothing; return their ids in order."""
        if not entries:
            return []
        if len(entries) == 1 and entries[0][1] == "*":
            return [await self._add_one(entries[0][0], entries[0][2])]
        index: dict[str, int] = {}
        args: list = []
        for sid, spec, data in entries:
            k = index.setdefault(sid, len(index) + 1)
            args += (k, spec, data)
        self.check_batch(index)
        keys = [self.key(sid) for sid in index] + [self.keys.meta(sid) for sid in index]
        try:
            ids = await self._add(keys=keys, args=[self.default_max_len, len(index), *index, *args])
        except ResponseError as exc:
            message = str(exc)
            if message.startswith(("PTGSTALE", "PTGTYPE")):
                raise StoreError(message.split(" ", 1)[1]) from None
            raise
        return [i.decode() for i in ids]

    async def _add_one(self, sid: str, data: bytes) -> str:
        """One entry with a Redis-made id: a plain XADD, atomic by itself. (Redis copies a script's
        arguments twice over: for a 512 KiB frame the script costs Redis three times the XADD.)"""
        max_len = await self.max_len(sid)
        key = self.key(sid)
        try:
            entry_id = await self.connections.once(key, "XADD", key, "MAXLEN", "~", max_len, "*", FIELD, data)
        except ResponseError as exc:
            if conn.is_unavailable(exc):
                raise
            if "WRONGTYPE" in str(exc):
                raise StoreError(f"{sid} is not a stream") from None
            raise StoreError(f"{sid}: {exc}") from None
        return entry_id.decode()

    async def max_len(self, sid: str) -> int:
        """The stream's retention (its `max_len`, else the default), as a single entry is stored
        with it: kept for MAX_LEN_FRESH seconds, so another process's change to it takes effect
        here within that time (this process's own at once)."""
        known = self._max_lens.get(sid)
        if known is not None and time.monotonic() - known[1] < MAX_LEN_FRESH:
            return known[0]
        return await self._read_max_len(sid)

    async def _read_max_len(self, sid: str) -> int:
        now = time.monotonic()
        meta_key = self.keys.meta(sid)
        try:
            value = await self.connections.once(meta_key, "HGET", meta_key, "max_len")
        except ResponseError as exc:
            if conn.is_unavailable(exc):
                raise
            value = None  # not a hash (written by someone else): the default
        max_len = int(value) if value is not None else self.default_max_len
        if len(self._max_lens) >= MAX_LEN_CACHE:
            self._max_lens.clear()
        self._max_lens[sid] = (max_len, now)
        return max_len

    def script(self, text: str):
        """A Lua script, called as `await script(keys=[...], args=[...])`, run on the server holding
        its keys (all in one slot on a cluster) by its hash, loaded there when that server lacks it."""
        return runner(self.connections, text)

    # -- reads ----------------------------------------------------------------------------------

    @_guarded
    async def read(self, requests: Sequence[tuple[str, str, int]]) -> list[Entry]:
        """Entries for `(stream id, cursor, count)` requests in one round trip.

        Cursor `*`: the newest `count` entries (oldest first); an entry id: up to
        `count` entries strictly after it (`0-0`: from the beginning).
        """
        if len(requests) == 1:
            # the common case (one stream) without a pipeline's bookkeeping
            try:
                replies = [await self.connections.once(self.key(requests[0][0]), *self._range(*requests[0]))]
            except ResponseError as exc:
                if conn.is_unavailable(exc):
                    raise
                replies = [exc]
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for request in requests:
                    pipe.execute_command(*self._range(*request))
                replies = await pipe.execute(raise_on_error=False)
        out: list[Entry] = []
        for (sid, cursor, _), reply in zip(requests, replies):
            if isinstance(reply, Exception):
                _raise_reply(sid, reply)
            if cursor == NEWEST:
                reply = reversed(reply)
            out += [(sid, entry_id.decode(), _data(fields)) for entry_id, fields in reply]
        return out

    def _range(self, sid: str, cursor: str, count: int) -> tuple:
        """The range command of one read request."""
        if cursor == NEWEST:
            return "XREVRANGE", self.key(sid), "+", "-", "COUNT", count
        if cursor == BEGINNING:
            return "XRANGE", self.key(sid), "-", "+", "COUNT", count
        if cursor == LAST_POSSIBLE_ID:
            # nothing can follow it, and Redis refuses an exclusive start there: an empty range instead
            return "XRANGE", self.key(sid), "+", "-", "COUNT", count
        return "XRANGE", self.key(sid), "(" + cursor, "+", "COUNT", count

    @_guarded
    async def last_ids(self, sids: Sequence[str]) -> list[str]:
        """The newest entry id of each stream (`0-0` for an empty or missing one): what `$` means now."""
        return [last for _, last, _ in await self.states(sids)]

    @_guarded
    async def states(self, sids: Sequence[str]) -> list[tuple[int, str, int | None]]:
        """`(epoch, newest entry id, entries ever added)` of each stream (`0-0` and 0 for an empty or
        missing one; entries added is None before Redis 7). The epoch is read first: a delete
        between the two reads shows as a newer epoch later, never as old data under a new epoch."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.get(self.epoch_key(sid))
                pipe.xinfo_stream(self.key(sid))
            replies = await pipe.execute(raise_on_error=False)
        states: list[tuple[int, str, int | None]] = []
        for i, sid in enumerate(sids):
            epoch, reply = replies[2 * i], replies[2 * i + 1]
            if isinstance(epoch, Exception):
                raise epoch
            if isinstance(reply, Exception):
                if conn.is_unavailable(reply):
                    raise reply
                if "WRONGTYPE" in str(reply):
                    raise StoreError(f"{sid} is not a stream")
                states.append((int(epoch or 0), BEGINNING, 0))
            else:
                added = reply.get("entries-added")
                states.append((int(epoch or 0), _text(reply.get("last-generated-id")) or BEGINNING,
                               int(added) if added is not None else None))
        return states

    @_guarded
    async def epochs(self, sids: Sequence[str]) -> list[int]:
        """Each stream's generation now (how many times it was deleted through ptgstore)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.get(self.epoch_key(sid))
            replies = await pipe.execute()
        return [int(epoch or 0) for epoch in replies]

    @_guarded
    async def added_after(self, sid: str, entry_id: str) -> tuple[int | None, list[tuple[str, bytes]]]:
        """In one snapshot: how many entries the stream was ever given (None before Redis 7) and
        its entries after `entry_id`."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xinfo_stream(self.key(sid))
            pipe.xrange(self.key(sid), "(" + entry_id, "+")
            info, records = await pipe.execute(raise_on_error=False)
        if isinstance(records, Exception):
            _raise_reply(sid, records)
        added = None if isinstance(info, Exception) else info.get("entries-added")
        return (int(added) if added is not None else None,
                [(entry_id.decode(), _data(fields)) for entry_id, fields in records])

    @_guarded
    async def read_noting_gaps(self, requests: Sequence[tuple[str, str, int]]) -> tuple[list[Entry], dict]:
        """Like `read`, and in the same snapshot (MULTI; on a cluster one per slot), for each stream
        whose oldest kept entry is after its cursor while entries were removed from it (trimmed or
        deleted), that oldest id: `{stream id: oldest kept id}`. A stream never trimmed has no gap,
        whatever the cursor (Redis 7 counts the entries a stream was ever given; with 6.2, a stream
        shorter than its `max_len` counts as never trimmed)."""
        groups = self._by_slot(requests, lambda request: request[0])
        replies = await asyncio.gather(*(self._gap_snapshot(group) for group in groups))
        out: list[Entry] = []
        gaps = {}
        for group, group_replies in zip(groups, replies):
            entries, group_gaps = self._noting_gaps(group, group_replies)
            out += entries
            gaps.update(group_gaps)
        return out, gaps

    async def _gap_snapshot(self, requests) -> list:
        async with self.redis.pipeline(transaction=True) as pipe:
            for request in requests:
                pipe.execute_command(*self._range(*request))
                pipe.xinfo_stream(self.key(request[0]))
                pipe.hget(self.keys.meta(request[0]), "max_len")
            return await pipe.execute(raise_on_error=False)

    def _noting_gaps(self, requests, replies) -> tuple[list[Entry], dict]:
        out: list[Entry] = []
        gaps = {}
        for i, (sid, cursor, _) in enumerate(requests):
            reply, info, max_len = replies[3 * i: 3 * i + 3]
            if isinstance(reply, Exception):
                _raise_reply(sid, reply)
            out += [(sid, entry_id.decode(), _data(fields)) for entry_id, fields in reply]
            if isinstance(info, Exception) or cursor == NEWEST:
                continue
            first = info.get("first-entry")
            added, length = info.get("entries-added"), int(info.get("length", 0))
            if added is not None:
                removed = int(added) > length
            else:  # Redis 6.2 does not count: a stream below its retention was not trimmed by it
                removed = length >= (int(max_len) if isinstance(max_len, bytes) else self.default_max_len)
            if first and removed and _pair(first[0].decode()) > _pair(cursor):
                gaps[sid] = first[0].decode()
        return out, gaps

    # -- streams and metadata (streaminfo.py) ---------------------------------------------------

    @_guarded
    async def stream_ids(self) -> list[str]:
        """Sorted ids of streams holding entries or having metadata (on every master of a cluster)."""
        return await streaminfo.stream_ids(self)

    @_guarded
    async def info(self, sid: str) -> dict | None:
        """Metadata, length and first/last entries of a stream; None when it does not exist."""
        return await streaminfo.info(self, sid)

    @_guarded
    async def set_meta(self, sid: str, meta: dict, override: bool = False) -> dict:
        """Merge `meta` into the stream's metadata (or replace it); `max_len` sets retention."""
        self._max_lens.pop(sid, None)
        return await streaminfo.set_meta(self, sid, meta, override)

    @_guarded
    async def summaries(self, sids: Sequence[str]) -> list[dict]:
        """A short summary of each stream that exists (for the dashboard), in one round trip."""
        return await streaminfo.summaries(self, sids)

    # -- deletions (deletions.py) --------------------------------------------------------------

    @_guarded
    async def delete(self, sids: Sequence[str]) -> list[str]:
        """Delete streams' entries and metadata, bump their epochs and tell every process; return
        the ids that existed."""
        return await deletions.delete(self, sids)

    async def watch_deletes(self, on_deleted) -> None:
        """Call `on_deleted(sid)` for each stream deleted through any process on this Redis (None:
        listening again, any may have been deleted meanwhile); until cancelled."""
        await deletions.watch(self, on_deleted)

    # -- the deployment: the token secret's fingerprint, the earlier key layout, the server ------

    @_guarded
    async def share_fingerprint(self, fingerprint: str) -> str | None:
        """Record this process's token secret fingerprint in Redis; return the one recorded before
        when it differs (a process whose tokens this one cannot verify, or the other way round)."""
        key = self.keys.secret_fingerprint
        before = await self.connections.once(key, "GET", key)
        if before is not None and before.decode() == fingerprint:
            return None
        await self.connections.once(key, "SET", key, fingerprint)
        return before.decode() if before is not None else None

    @_guarded
    async def migrate(self) -> int:
        """Move metadata from the global hashes of earlier versions into each stream's own hash
        (migration.py); how many streams' metadata moved."""
        return await migration.migrate(self)

    @_guarded
    async def server_info(self) -> dict:
        """Which Redis this is and how it fares (a few fields of INFO; on a cluster, of one node)."""
        if self.cluster:
            info = await self.redis.info(target_nodes=self.redis.get_random_node())
        else:
            info = await self.redis.info()
        keep = ("redis_version", "redis_mode", "uptime_in_seconds", "used_memory", "used_memory_human",
                "connected_clients", "aof_enabled", "role")
        out = {key: _text(info[key]) for key in keep if key in info}
        if self.cluster:
            out["masters"] = len(self.redis.get_primaries())
        return out

    # -- for the other domains kept in this Redis (the recordings' state, recordings/state.py) -----

    # a domain's methods are wrapped as the store's: Redis failures become StoreUnavailable, the round
    # trip is reported to the domain's own `on_roundtrip`
    guarded = staticmethod(_guarded)

    def tail_at(self, key: str):
        """A connection of its own for blocking reads, first placed at `key`'s server (any key: `tail`
        places it by a stream); `read_after` moves it to the streams it reads."""
        return self.connections.tail(key)

    def by_slot(self, sids: Sequence[str]) -> list[list[str]]:
        """The streams grouped by hash slot (one group on a single Redis), in order."""
        return self._by_slot(sids)

    async def read_after(self, reads: Sequence[tuple[int, Sequence[str]]], cursors: dict[str, str], *,
                         tail=None, block_ms: int | None = None) -> list[Entry]:
        """Entries `(stream id, entry id, bytes)` after each stream's cursor, in one round trip: one
        XREAD of up to `count` entries of each stream for each `(count, sids)` of `reads`. On `tail`
        (a connection of its own, every stream in one slot) each XREAD waits up to `block_ms` for its
        first entry; without it they go through the pool and none waits. Failures are raised as
        StoreUnavailable."""
        block = ("BLOCK", block_ms) if tail is not None and block_ms is not None else ()
        commands = [("XREAD", "COUNT", count, *block, "STREAMS", *(self.key(sid) for sid in sids),
                     *(cursors[sid] for sid in sids)) for count, sids in reads]
        try:
            if tail is not None:
                replies = await tail.pipelined(commands, key=self.key(reads[0][1][0]))
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for command in commands:
                        pipe.execute_command(*command)
                    replies = await pipe.execute()
        except (*conn.UNAVAILABLE, ResponseError) as exc:
            raise StoreUnavailable(f"store unavailable: {conn.reason(exc)}") from exc
        by_key = {self.key(sid): sid for _, sids in reads for sid in sids}
        out: list[Entry] = []
        for reply in replies:
            for key, records in (reply.items() if isinstance(reply, dict) else reply or ()):  # RESP3 or RESP2
                sid = by_key[key.decode("utf-8", "surrogateescape")]
                out += [(sid, entry_id.decode(), _data(fields)) for entry_id, fields in records]
        return out


def _raise_reply(sid: str, reply: Exception):
    """Raise what an error reply about a stream means."""
    if not conn.is_unavailable(reply) and "WRONGTYPE" in str(reply):
        raise StoreError(f"{sid} is not a stream")
    raise reply
