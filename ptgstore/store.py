"""The streams' domain in Redis: entries, ranges, metadata, info, retention.

Connections (kept lanes, the watchdog, packing, cluster routing) are `connections.py`'s; key names
are `keys.py`'s.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from datetime import datetime, timezone
from typing import Any, Sequence

import orjson

from .backoff import Backoff
from . import connections as conn
from .connections import Connections, NoScriptError, ResponseError, WatchError
from .framing import BEGINNING, LAST_POSSIBLE_ID, NEWEST, FramingError, writable_stream_id
from .keys import META_SUFFIX, Keys

log = logging.getLogger("ptgstore.store")

FIELD = b"d"
MAX_LEN_FRESH = 1.0  # seconds a stream's max_len is kept in memory
MAX_LEN_CACHE = 10_000  # streams whose max_len is kept
SUMMARY_CHUNK = 100  # streams per summary script call: Redis serves others between two (about 2 ms each)

Entry = tuple  # (stream id, entry id, bytes)


class StoreError(Exception):
    """A request the store refuses (stale timestamp, wrong key type, bad metadata)."""


class StoreUnavailable(Exception):
    """Redis cannot be reached or did not answer in time."""


class CrossGroupBatch(StoreError):
    """A batch over streams of several groups, on a cluster (where it could not be stored atomically)."""


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


# Adds a batch atomically. KEYS: the distinct stream keys, then their metadata hashes (in the same order).
# ARGV: default max_len, n streams, their ids (fields of the max_len hash), then for
# each entry: stream index (1-based), id spec (`*`, `t<ms>` or `ms-seq`), bytes.
# Entries with client times get `ms-0`, or `ms-(seq+1)` within the newest millisecond.
# On any refusal the entries already added are removed again: no half batches.
_ADD_SCRIPT = """
local nstreams = tonumber(ARGV[2])
local last, existed, added = {}, {}, {}
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function info(key)
  local fields, out = redis.call('XINFO', 'STREAM', key), {}
  for i = 1, #fields - 1, 2 do out[fields[i]] = fields[i + 1] end
  return out
end
local function undo(reason)
  -- a stream keeps the count of entries it was ever given (Redis 7): put it back, so that the
  -- refused entries do not look like trimmed ones (a gap) to pulls
  local before, count = {}, {}
  for i = 1, #added do
    local k = added[i][1]
    if existed[k] == 1 and before[k] == nil then before[k] = info(KEYS[k]) end
    count[k] = (count[k] or 0) + 1
  end
  for i = #added, 1, -1 do redis.call('XDEL', KEYS[added[i][1]], added[i][2]) end
  for k, state in pairs(before) do
    local top = redis.call('XREVRANGE', KEYS[k], '+', '-', 'COUNT', 1)
    if state['entries-added'] and top[1] then
      redis.pcall('XSETID', KEYS[k], top[1][1], 'ENTRIESADDED', state['entries-added'] - count[k],
                  'MAXDELETEDID', state['max-deleted-entry-id'])
    end
  end
  for k = 1, nstreams do
    if existed[k] == 0 and redis.call('EXISTS', KEYS[k]) == 1 and redis.call('XLEN', KEYS[k]) == 0 then
      redis.call('DEL', KEYS[k])
    end
  end
  return redis.error_reply(reason)
end
local ids = {}
local base = 3 + nstreams
for i = base, #ARGV, 3 do
  local k = tonumber(ARGV[i])
  local spec = ARGV[i + 1]
  if existed[k] == nil then existed[k] = redis.call('EXISTS', KEYS[k]) end
  local id = spec
  if string.sub(spec, 1, 1) == 't' then
    local ms = tonumber(string.sub(spec, 2))
    if last[k] == nil then
      local top = redis.call('XREVRANGE', KEYS[k], '+', '-', 'COUNT', 1)
      if top[1] then last[k] = top[1][1] else last[k] = '0-0' end
    end
    local lms, lseq = split(last[k])
    if ms > lms then id = string.format('%.0f-0', ms)
    elseif ms == lms then id = string.format('%.0f-%.0f', ms, lseq + 1)
    else return undo('PTGSTALE timestamp ' .. string.format('%.0f', ms) .. ' is older than the newest entry ' .. last[k]) end
  end
  local ok = redis.pcall('XADD', KEYS[k], id, 'd', ARGV[i + 2])
  if type(ok) == 'table' and ok.err then
    if string.find(ok.err, 'WRONGTYPE') then return undo('PTGTYPE ' .. ARGV[2 + k] .. ' is not a stream') end
    return undo('PTGSTALE entry id ' .. id .. ' is not newer than the newest entry')
  end
  last[k] = ok
  added[#added + 1] = {k, ok}
  ids[#ids + 1] = ok
end
for k = 1, nstreams do
  local max = tonumber(redis.call('HGET', KEYS[nstreams + k], 'max_len')) or tonumber(ARGV[1])
  redis.call('XTRIM', KEYS[k], 'MAXLEN', '~', max)
end
return ids
"""


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


def entry_time_iso(entry_id: str | None) -> str | None:
    """The ISO time of an entry id's milliseconds (None for none)."""
    if not entry_id:
        return None
    ms = int(entry_id.split("-")[0])
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


def validate_max_len(meta: dict) -> None:
    """Refuse a `max_len` but a whole number from 1 to 10**12 (Lua writes larger ones as 1e+14: XTRIM refuses)."""
    if "max_len" in meta:
        value = meta["max_len"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**12:
            raise StoreError(f"max_len must be a whole number from 1 to 10**12, not {value!r}")


class Store:
    """Entries and metadata of streams in one Redis or one Redis Cluster."""

    def __init__(self, url: str, *, key_prefix: str = "", default_max_len: int = 1000, pool_size: int = 64,
                 timeout: float = 30, cluster: bool = False, group_separator: str = ":"):
        self.prefix = key_prefix
        self.default_max_len = default_max_len
        self.connections = Connections(url, cluster=cluster, pool_size=pool_size, timeout=timeout)
        self.cluster = cluster
        self.redis = self.connections.client
        self.keys = Keys(key_prefix, separator=group_separator, tagged=cluster)
        self.key = self.keys.stream  # (bound once: one call less on every entry)
        self._add = self.script(_ADD_SCRIPT)
        self._summary: Any = None  # the summaries script, registered on first use
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
        known = self._max_lens.get(sid)
        if known is not None and time.monotonic() - known[1] < MAX_LEN_FRESH:
            max_len = known[0]
        else:
            max_len = await self._read_max_len(sid)
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

    async def _read_max_len(self, sid: str) -> int:
        """The stream's retention, kept for MAX_LEN_FRESH seconds: another process's change to it
        takes effect here within that time (this process's own at once)."""
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
        sha = hashlib.sha1(text.encode()).hexdigest()

        async def run(keys: Sequence, args: Sequence = ()):
            try:
                return await self.connections.once(keys[0], "EVALSHA", sha, len(keys), *keys, *args)
            except NoScriptError:  # nothing ran: a restarted or flushed Redis forgot the script
                await self.connections.once(keys[0], "SCRIPT", "LOAD", text)
                return await self.connections.once(keys[0], "EVALSHA", sha, len(keys), *keys, *args)

        return run

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

    @_guarded
    async def first_id(self, sid: str) -> str | None:
        """The oldest entry id still kept, or None."""
        reply = await self.redis.xrange(self.key(sid), "-", "+", count=1)
        return reply[0][0].decode() if reply else None

    # -- streams and metadata -------------------------------------------------------------------

    @_guarded
    async def stream_ids(self) -> list[str]:
        """Sorted ids of streams holding entries or having metadata (on every master of a cluster)."""
        found = set()
        pattern = self.keys.pattern
        async for key in self.connections.scan(pattern, "stream"):
            found.add(self.keys.sid_of(key.decode("utf-8", "surrogateescape")))
        async for key in self.connections.scan(pattern[:-1] + "*" + META_SUFFIX, "hash"):
            found.add(self.keys.sid_of(key.decode("utf-8", "surrogateescape"), META_SUFFIX))
        valid = []
        for sid in found:
            if sid is None:  # not a key of ptgstore's layout
                continue
            try:
                valid.append(writable_stream_id(sid))  # the server's own streams are not listed
            except FramingError:
                continue
        return sorted(valid)

    @_guarded
    async def info(self, sid: str) -> dict | None:
        """Metadata, length and first/last entries of a stream; None when it does not exist."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.meta(sid), "meta")
            pipe.xinfo_stream(self.key(sid))
            meta_raw, stream = await pipe.execute(raise_on_error=False)
        for reply in (meta_raw, stream):
            if isinstance(reply, Exception) and conn.is_unavailable(reply):
                raise reply
        if isinstance(meta_raw, Exception):
            meta_raw = None
        if isinstance(stream, Exception):
            if "no such key" not in str(stream).lower():
                raise StoreError(f"{sid} is not a stream")
            if meta_raw is None:
                return None
            stream = {}
        info = {key: value for key, value in _text(stream).items() if key not in ("first-entry", "last-entry")}
        first = stream.get("first-entry")
        last = stream.get("last-entry")
        info.update({
            "sid": sid,
            "meta": orjson.loads(meta_raw) if meta_raw else {},
            "length": stream.get("length", 0),
            "first-entry": _text(first[0]) if first else None,
            "last-entry": _text(last[0]) if last else None,
        })
        info["first-entry-time"] = entry_time_iso(info["first-entry"])
        info["last-entry-time"] = entry_time_iso(info["last-entry"])
        return info

    @_guarded
    async def set_meta(self, sid: str, meta: dict, override: bool = False) -> dict:
        """Merge `meta` into the stream's metadata (or replace it); `max_len` sets retention."""
        validate_max_len(meta)
        meta_key = self.keys.meta(sid)

        async def update(pipe):
            current = {} if override else orjson.loads(await pipe.hget(meta_key, "meta") or b"{}")
            merged = {**current, **meta}
            pipe.multi()
            pipe.hset(meta_key, "meta", orjson.dumps(merged))
            if "max_len" in merged:
                pipe.hset(meta_key, "max_len", merged["max_len"])
            else:
                pipe.hdel(meta_key, "max_len")
            return merged

        self._max_lens.pop(sid, None)
        return await self.redis.transaction(update, meta_key, value_from_callable=True)

    @_guarded
    async def delete(self, sids: Sequence[str]) -> list[str]:
        """Delete streams' entries and metadata; return the ids that existed.

        Each stream's epoch is bumped in the same transaction (a follower that reads it with its
        entries can tell a re-created stream from the one it buffered), and every process is told
        at once on the deletions channel (so its followers stop serving from memory). On a cluster,
        the streams of one slot are deleted together, and the news follows each transaction."""
        existed: set[str] = set()
        for group in self._by_slot(sids):
            async with self.redis.pipeline(transaction=True) as pipe:
                for sid in group:
                    pipe.delete(self.key(sid))
                    pipe.delete(self.keys.meta(sid))
                    pipe.incr(self.epoch_key(sid))
                    if not self.cluster:
                        pipe.publish(self.keys.deleted_channel, sid)
                replies = await pipe.execute()
            step = 3 if self.cluster else 4
            existed.update(sid for i, sid in enumerate(group) if replies[step * i] or replies[step * i + 1])
            for sid in group:
                self._max_lens.pop(sid, None)
                if self.cluster:  # PUBLISH reaches every node of the cluster
                    await self.redis.execute_command("PUBLISH", self.keys.deleted_channel, sid,
                                                     target_nodes=self.redis.RANDOM)
        return [sid for sid in sids if sid in existed]

    async def watch_deletes(self, on_deleted) -> None:
        """Call `on_deleted(sid)` for each stream deleted through any process on this Redis, and
        `on_deleted(None)` after a lost subscription is back (deletes may have been missed meanwhile).
        Runs until cancelled; an outage is waited out."""
        backoff = Backoff()
        while True:
            try:
                async with self.connections.subscribed(self.keys.deleted_channel) as pubsub:
                    on_deleted(None)
                    backoff.reset()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            on_deleted(message["data"].decode("utf-8", "surrogateescape"))
            except (*conn.UNAVAILABLE, ResponseError) as exc:
                pause = backoff.failed()
                log.warning("deletions channel: %s; resubscribing in %.2f s", exc, pause)
                await asyncio.sleep(pause)
                continue
            await asyncio.sleep(backoff.first)  # the channel ended without an error: subscribe again

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

    # -- the layout of earlier versions -------------------------------------------------------

    @_guarded
    async def migrate(self) -> int:
        """Move metadata from the global hashes of earlier versions (`ptgstore:meta`,
        `ptgstore:maxlen`) into each stream's own hash; idempotent, safe with several processes
        starting at once (the first one moves, the others find nothing). Returns how many streams'
        metadata moved."""
        legacy = (self.keys.legacy_meta, self.keys.legacy_maxlen)
        if self.cluster or not await self.redis.exists(*legacy):
            return 0

        async def move(pipe):
            metas, max_lens = await pipe.hgetall(legacy[0]), await pipe.hgetall(legacy[1])
            pipe.multi()
            for sid in {*metas, *max_lens}:
                name = self.keys.meta(sid.decode("utf-8", "surrogateescape"))
                if sid in metas:
                    pipe.hset(name, "meta", metas[sid])
                if sid in max_lens:
                    pipe.hset(name, "max_len", max_lens[sid])
            pipe.delete(*legacy)
            return len({*metas, *max_lens})

        try:
            moved = await self.redis.transaction(move, *legacy, value_from_callable=True)
        except WatchError:
            return 0
        log.info("moved the metadata of %d streams to per-stream keys (the layout of this version)", moved)
        return moved

    # -- summaries (the dashboard's overview) ---------------------------------------------------

    @_guarded
    async def summaries(self, sids: Sequence[str]) -> list[dict]:
        """A short summary of each stream that exists, in one round trip whatever their number (on a
        cluster, one per master), without any entry's bytes leaving Redis: length, newest and oldest
        ids, entries ever added (Redis 7+, else None), the newest entry's size and image type,
        max_len and metadata."""
        if self._summary is None:
            # (one pipeline on a single Redis: redis-py's script object loads the script when needed)
            self._summary = self.script(_SUMMARY_SCRIPT) if self.cluster else self.redis.register_script(_SUMMARY_SCRIPT)
        chunks = []
        for group in self._by_slot(sids):
            chunks += [group[start:start + SUMMARY_CHUNK] for start in range(0, len(group), SUMMARY_CHUNK)]
        keys = [[k for sid in chunk for k in (self.key(sid), self.keys.meta(sid))] for chunk in chunks]
        if self.cluster:  # (a cluster pipeline runs no scripts: the chunks go out side by side)
            replies = await asyncio.gather(*(self._summary(keys=k) for k in keys), return_exceptions=True)
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for chunk_keys in keys:
                    await self._summary(keys=chunk_keys, client=pipe)
                replies = await pipe.execute(raise_on_error=False)
        by_sid: dict[str, Any] = {}
        for chunk, reply in zip(chunks, replies):
            if isinstance(reply, BaseException):
                raise reply
            by_sid.update(zip(chunk, reply))
        out = []
        for sid in sids:
            summary = by_sid.get(sid)
            if not summary:
                continue
            row, meta_raw = summary
            meta = orjson.loads(meta_raw) if meta_raw else {}
            if not row and not meta:
                continue  # gone since it was listed, or not a stream
            length, last_id, added, first, last, size, kind = row or (0, b"0-0", -1, b"", b"", 0, b"")
            out.append({
                "sid": sid, "length": length, "last-generated-id": _text(last_id),
                "entries-added": added if added >= 0 else None,
                "first-entry": _text(first) or None, "last-entry": _text(last) or None, "last-entry-size": size,
                "last-entry-type": _text(kind) or None,
                "max_len": meta.get("max_len", self.default_max_len), "meta": meta,
            })
        return out

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


# KEYS: pairs of a stream and its metadata hash. For each stream `{summary, metadata JSON}`, the summary
# without sending any entry: length, last generated id, entries ever added (-1 before Redis 7), oldest
# and newest entry ids, the newest entry's size in bytes and its image type when it starts with a JPEG
# or PNG signature; false for a key that is missing or not a stream (and for missing metadata).
# One call for all: a script call costs more than XINFO.
_SUMMARY_SCRIPT = r"""
local out = {}
for n = 1, #KEYS / 2 do
  local info = redis.pcall('XINFO', 'STREAM', KEYS[2 * n - 1])
  local meta = redis.pcall('HGET', KEYS[2 * n], 'meta')
  if type(meta) == 'table' then meta = false end
  if type(info) ~= 'table' or info.err then
    out[n] = {false, meta}
  else
    local row = {0, '0-0', -1, '', '', 0, ''}
    for i = 1, #info, 2 do
      local k, v = info[i], info[i + 1]
      if k == 'length' then row[1] = v
      elseif k == 'last-generated-id' then row[2] = v
      elseif k == 'entries-added' then row[3] = v
      elseif k == 'first-entry' and v then row[4] = v[1]
      elseif k == 'last-entry' and v then
        row[5] = v[1]
        local fields = v[2]
        for j = 1, #fields, 2 do
          if fields[j] == 'd' then
            local data = fields[j + 1]
            row[6] = string.len(data)
            if string.sub(data, 1, 3) == '\255\216\255' then row[7] = 'image/jpeg'
            elseif string.sub(data, 1, 8) == '\137PNG\r\n\026\n' then row[7] = 'image/png' end
          end
        end
      end
    end
    out[n] = {row, meta}
  end
end
return out
"""
