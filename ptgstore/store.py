"""The only module that speaks Redis: entries, ranges, metadata, info, retention."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from datetime import datetime, timezone
from typing import Sequence

import hiredis
import orjson
import redis.asyncio as aioredis
from redis import exceptions as rexc

from .framing import BEGINNING, NEWEST, validate_stream_id, FramingError

log = logging.getLogger("ptgstore.store")

FIELD = b"d"
_LAST_POSSIBLE_ID = f"{2**64 - 1}-{2**64 - 1}"
MAX_LEN_FRESH = 1.0  # seconds a stream's max_len is kept in memory
MAX_LEN_CACHE = 10_000  # streams whose max_len is kept
LANES = 8  # connections kept for the hot path, besides the pool
LARGE_VALUE = 16 * 1024  # bytes from which a command's value is sent as it is, not packed with the rest
SUMMARY_CHUNK = 100  # streams per summary script call: Redis serves others between two (about 2 ms each)

Entry = tuple  # (stream id, entry id, bytes)


class StoreError(Exception):
    """A request the store refuses (stale timestamp, wrong key type, bad metadata)."""


class StoreUnavailable(Exception):
    """Redis cannot be reached or did not answer in time."""


def _guarded(method):
    """Turn Redis connection failures into StoreUnavailable, with the reason; report the round trip."""

    op = method.__name__

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return await method(self, *args, **kwargs)
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"store unavailable: {exc}".strip()) from exc
        except rexc.BusyLoadingError as exc:
            raise StoreUnavailable("store unavailable: Redis is loading its data") from exc
        finally:
            if self.on_roundtrip is not None:
                # reported once the caller has moved on (sent its reply): off the latency path
                asyncio.get_running_loop().call_soon(self.on_roundtrip, op, time.perf_counter() - started)

    return wrapper


# Adds a batch atomically. KEYS: the distinct stream keys, then the max_len hash.
# ARGV: default max_len, n streams, their ids (fields of the max_len hash), then for
# each entry: stream index (1-based), id spec (`*`, `t<ms>` or `ms-seq`), bytes.
# Entries with client times get `ms-0`, or `ms-(seq+1)` within the newest millisecond.
# On any refusal the entries already added are removed again: no half batches.
_ADD_SCRIPT = """
local nstreams = tonumber(ARGV[2])
local maxlen_key = KEYS[nstreams + 1]
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
  local max = tonumber(redis.call('HGET', maxlen_key, ARGV[2 + k])) or tonumber(ARGV[1])
  redis.call('XTRIM', KEYS[k], 'MAXLEN', '~', max)
end
return ids
"""


async def _call(connection, command: tuple):
    """One command and its reply on `connection` (connected on first use and after a failure)."""
    try:
        if _closed_by_peer(connection):
            await connection.disconnect()  # closed by Redis while idle (a restart, a timeout): reconnect
        await connection.send_packed_command(_pack(connection, command), check_health=False)
        return await connection.read_response()
    except rexc.ResponseError:
        raise
    except BaseException:
        # cut short (failure or cancellation): its reply may still come, so never reuse the socket
        await connection.disconnect()
        raise


def _pack(connection, command: tuple):
    """The command in Redis's protocol: packed in C by hiredis (a fifth of redis-py's cost), except
    with a large value (always last) or memoryviews (slices of a batch), which redis-py's packer
    sends as they are, uncopied."""
    last = command[-1]
    if not (isinstance(last, bytes) and len(last) >= LARGE_VALUE):
        try:
            return hiredis.pack_command(command)
        except TypeError:  # a memoryview
            pass
    return connection.pack_command(*command)


def _closed_by_peer(connection) -> bool:
    """Whether Redis closed an idle connection, read from its stream reader's state (redis-py's own
    check reads the socket under a zero timeout, which costs more than the command)."""
    reader = getattr(connection, "_reader", None)
    return reader is not None and (reader.at_eof() or reader.exception() is not None)


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


def _iso(entry_id: str | None) -> str | None:
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
    """Refuse a `max_len` that is not a positive whole number."""
    if "max_len" in meta:
        value = meta["max_len"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise StoreError(f"max_len must be a positive whole number, not {value!r}")


class Store:
    """Entries and metadata of streams in one Redis, through a shared pool and a few kept connections."""

    def __init__(self, url: str, *, key_prefix: str = "", default_max_len: int = 1000, pool_size: int = 64,
                 timeout: float = 30):
        self.prefix = key_prefix
        self.default_max_len = default_max_len
        # a blocking pool: callers wait for a free connection instead of failing
        self.pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=10, socket_timeout=timeout,
            socket_connect_timeout=5, health_check_interval=30,
        )
        self.redis = aioredis.Redis(connection_pool=self.pool)
        self.meta_key = key_prefix + "ptgstore:meta"
        self.maxlen_key = key_prefix + "ptgstore:maxlen"
        self.deleted_channel = key_prefix + "ptgstore:deleted"  # every process hears of every delete
        self._add = self.redis.register_script(_ADD_SCRIPT)
        self._summary = None  # the summaries script, registered on first use
        # a few connections kept for entries in and out ("lanes"): leasing from the pool costs
        # more than the command itself. Lanes have no per-command timer (a third of the cost of a
        # command): a watchdog drops a lane instead when its command has waited too long.
        self._lane_options = {**self.pool.connection_kwargs, "socket_timeout": None, "health_check_interval": 0}
        self._lanes_free: list = []
        self._lanes_busy: dict = {}  # lane -> when its command was sent (monotonic)
        self._max_lanes = min(LANES, pool_size)
        self._watchdog: asyncio.TimerHandle | None = None
        self._max_lens: dict[str, tuple[int, float]] = {}  # stream id -> (max_len, read at)
        self.on_roundtrip = None  # called with (store method name, seconds) after each guarded call

    def key(self, sid: str) -> str:
        return self.prefix + sid

    def epoch_key(self, sid: str) -> str:
        """The stream's generation counter, bumped by each delete: the stream key plus a suffix that
        no stream id can end with (`+` is not allowed in one), so a hash tag of the stream key keeps
        both in one cluster slot."""
        return self.prefix + sid + "+epoch"

    def blocking_connection(self):
        """A connection of its own for one follower's blocking reads (kept off the pool and lanes)."""
        return self.pool.connection_class(**self._lane_options)

    async def follow(self, connection, sid: str, cursor: str, count: int, block_ms: int):
        """A follower's wait: up to `count` entries `(entry id, bytes)` after `cursor`, waiting up to
        `block_ms` for the first ([] when none came), then in the same round trip (pipelined, run by
        Redis right after the read is served) the stream's generation and length:
        `(records, epoch, length)`. Redis errors are raised as they are (the follower retries)."""
        key = self.key(sid)
        commands = [("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", key, cursor),
                     ("GET", self.epoch_key(sid)), ("XLEN", key)]
        try:
            if _closed_by_peer(connection):
                await connection.disconnect()
            await connection.send_packed_command(b"".join(hiredis.pack_command(c) for c in commands),
                                                 check_health=False)
            reply = await connection.read_response()
            epoch = await connection.read_response()
            length = await connection.read_response()
        except BaseException:
            # cut short (failure or cancellation): its replies may still come, so never reuse the socket
            await connection.disconnect()
            raise
        if not reply:
            return [], int(epoch or 0), length
        records = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]  # RESP3 or RESP2
        return [(entry_id.decode(), _data(fields)) for entry_id, fields in records], int(epoch or 0), length

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for lane in self._lanes_free + list(self._lanes_busy):
            await lane.disconnect()
        await self.redis.aclose()
        await self.pool.disconnect()

    @_guarded
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    # -- writes -------------------------------------------------------------------------------

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
        keys = [self.key(sid) for sid in index] + [self.maxlen_key]
        try:
            ids = await self._run_add(keys, [self.default_max_len, len(index), *index, *args])
        except rexc.ResponseError as exc:
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
        try:
            entry_id = await self._once("XADD", self.key(sid), "MAXLEN", "~", max_len, "*", FIELD, data)
        except rexc.ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise StoreError(f"{sid} is not a stream") from None
            raise StoreError(f"{sid}: {exc}") from None
        return entry_id.decode()

    async def _read_max_len(self, sid: str) -> int:
        """The stream's retention, kept for MAX_LEN_FRESH seconds: another process's change to it
        takes effect here within that time (this process's own at once)."""
        now = time.monotonic()
        value = await self._once("HGET", self.maxlen_key, sid)
        max_len = int(value) if value is not None else self.default_max_len
        if len(self._max_lens) >= MAX_LEN_CACHE:
            self._max_lens.clear()
        self._max_lens[sid] = (max_len, now)
        return max_len

    async def _run_add(self, keys: list, args: list) -> list[bytes]:
        try:
            return await self._once("EVALSHA", self._add.sha, len(keys), *keys, *args)
        except rexc.NoScriptError:  # nothing ran: a restarted or flushed Redis forgot the script
            await self.redis.script_load(_ADD_SCRIPT)
            return await self._once("EVALSHA", self._add.sha, len(keys), *keys, *args)

    async def _once(self, *command):
        """One command of the hot path and its reply, on a free lane, a new one, or else (all
        LANES busy) a pooled connection.

        Without the client's retry layer (and its cost on every entry): a write retried after
        a lost reply could be stored twice."""
        if self._lanes_free:
            lane = self._lanes_free.pop()
        elif len(self._lanes_busy) < self._max_lanes:
            lane = self.pool.connection_class(**self._lane_options)
            if self._watchdog is None:
                self._watch()
        else:
            connection = await self.pool.get_connection()
            try:
                return await _call(connection, command)
            finally:
                await self.pool.release(connection)
        self._lanes_busy[lane] = time.monotonic()
        try:
            return await _call(lane, command)
        finally:
            del self._lanes_busy[lane]
            self._lanes_free.append(lane)

    def _watch(self) -> None:
        """Drop a lane whose command has waited too long (Redis stopped or cut off): the waiting
        caller then fails as store unavailable instead of hanging."""
        limit = self.pool.connection_kwargs["socket_timeout"]
        now = time.monotonic()
        for lane, since in list(self._lanes_busy.items()):
            if now - since > limit:
                log.warning("Redis did not answer within %.0f s: dropping the connection", limit)
                asyncio.get_running_loop().create_task(lane.disconnect())
        self._watchdog = asyncio.get_running_loop().call_later(1, self._watch)

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
                replies = [await self._once(*self._range(*requests[0]))]
            except rexc.ResponseError as exc:
                replies = [exc]
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for request in requests:
                    pipe.execute_command(*self._range(*request))
                replies = await pipe.execute(raise_on_error=False)
        out: list[Entry] = []
        for (sid, cursor, _), reply in zip(requests, replies):
            if isinstance(reply, rexc.ResponseError):
                if "WRONGTYPE" in str(reply):
                    raise StoreError(f"{sid} is not a stream")
                raise reply
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
        if cursor == _LAST_POSSIBLE_ID:
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
        states = []
        for i, sid in enumerate(sids):
            epoch, reply = replies[2 * i], replies[2 * i + 1]
            if isinstance(epoch, rexc.ResponseError):
                raise epoch
            if isinstance(reply, rexc.ResponseError):
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
        if isinstance(records, rexc.ResponseError):
            raise records
        added = None if isinstance(info, rexc.ResponseError) else info.get("entries-added")
        return (int(added) if added is not None else None,
                [(entry_id.decode(), _data(fields)) for entry_id, fields in records])

    @_guarded
    async def read_noting_gaps(self, requests: Sequence[tuple[str, str, int]]) -> tuple[list[Entry], dict]:
        """Like `read`, and in the same snapshot (MULTI), for each stream whose oldest kept entry is
        after its cursor while entries were removed from it (trimmed or deleted), that oldest id:
        `{stream id: oldest kept id}`. A stream never trimmed has no gap, whatever the cursor (Redis 7
        counts the entries a stream was ever given; with 6.2, a stream shorter than its `max_len`
        counts as never trimmed)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for request in requests:
                pipe.execute_command(*self._range(*request))
                pipe.xinfo_stream(self.key(request[0]))
                pipe.hget(self.maxlen_key, request[0])
            replies = await pipe.execute(raise_on_error=False)
        out: list[Entry] = []
        gaps = {}
        for i, (sid, cursor, _) in enumerate(requests):
            reply, info, max_len = replies[3 * i: 3 * i + 3]
            if isinstance(reply, rexc.ResponseError):
                if "WRONGTYPE" in str(reply):
                    raise StoreError(f"{sid} is not a stream")
                raise reply
            out += [(sid, entry_id.decode(), _data(fields)) for entry_id, fields in reply]
            if isinstance(info, rexc.ResponseError) or cursor == NEWEST:
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
        """Sorted ids of streams holding entries or having metadata."""
        found = set()
        pattern = self.prefix.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?").replace("[", "\\[") + "*"
        async for key in self.redis.scan_iter(match=pattern, count=1000, _type="stream"):
            found.add(key.decode("utf-8", "surrogateescape")[len(self.prefix):])
        found.update(k.decode() for k in await self.redis.hkeys(self.meta_key))
        valid = []
        for sid in found:
            try:
                valid.append(validate_stream_id(sid))
            except FramingError:
                continue
        return sorted(valid)

    @_guarded
    async def info(self, sid: str) -> dict | None:
        """Metadata, length and first/last entries of a stream; None when it does not exist."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.meta_key, sid)
            pipe.xinfo_stream(self.key(sid))
            meta_raw, stream = await pipe.execute(raise_on_error=False)
        if isinstance(stream, rexc.ResponseError):
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
        info["first-entry-time"] = _iso(info["first-entry"])
        info["last-entry-time"] = _iso(info["last-entry"])
        return info

    @_guarded
    async def set_meta(self, sid: str, meta: dict, override: bool = False) -> dict:
        """Merge `meta` into the stream's metadata (or replace it); `max_len` sets retention."""
        validate_max_len(meta)

        async def update(pipe):
            current = {} if override else orjson.loads(await pipe.hget(self.meta_key, sid) or b"{}")
            merged = {**current, **meta}
            pipe.multi()
            pipe.hset(self.meta_key, sid, orjson.dumps(merged))
            if "max_len" in merged:
                pipe.hset(self.maxlen_key, sid, merged["max_len"])
            else:
                pipe.hdel(self.maxlen_key, sid)
            return merged

        self._max_lens.pop(sid, None)
        return await self.redis.transaction(update, self.meta_key, value_from_callable=True)

    @_guarded
    async def delete(self, sids: Sequence[str]) -> list[str]:
        """Delete streams' entries and metadata; return the ids that existed.

        Each stream's epoch is bumped in the same transaction (a follower that reads it with its
        entries can tell a re-created stream from the one it buffered), and every process is told
        at once on the deletions channel (so its followers stop serving from memory)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for sid in sids:
                pipe.delete(self.key(sid))
                pipe.hdel(self.meta_key, sid)
                pipe.hdel(self.maxlen_key, sid)
                pipe.incr(self.epoch_key(sid))
                pipe.publish(self.deleted_channel, sid)
            replies = await pipe.execute()
        for sid in sids:
            self._max_lens.pop(sid, None)
        return [sid for i, sid in enumerate(sids) if replies[5 * i] or replies[5 * i + 1]]

    async def watch_deletes(self, on_deleted) -> None:
        """Call `on_deleted(sid)` for each stream deleted through any process on this Redis, and
        `on_deleted(None)` after a lost subscription is back (deletes may have been missed meanwhile).
        Runs until cancelled; an outage is waited out."""
        backoff = 0.05
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.deleted_channel)
                on_deleted(None)
                backoff = 0.05
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        on_deleted(message["data"].decode("utf-8", "surrogateescape"))
            except (rexc.RedisError, OSError) as exc:
                log.warning("deletions channel: %s; resubscribing in %.2f s", exc, backoff)
            finally:
                with contextlib.suppress(rexc.RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    # -- summaries (the dashboard's overview) ---------------------------------------------------

    @_guarded
    async def summaries(self, sids: Sequence[str]) -> list[dict]:
        """A short summary of each stream that exists, in one round trip whatever their number, without
        any entry's bytes leaving Redis: length, newest and oldest ids, entries ever added (Redis 7+,
        else None), the newest entry's size and image type, max_len and metadata."""
        if self._summary is None:
            self._summary = self.redis.register_script(_SUMMARY_SCRIPT)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.meta_key)
            for start in range(0, len(sids), SUMMARY_CHUNK):
                chunk = sids[start:start + SUMMARY_CHUNK]
                await self._summary(keys=[self.key(sid) for sid in chunk], client=pipe)
            meta_raw, *chunks = await pipe.execute(raise_on_error=False)
        replies = []
        for chunk in chunks:
            if isinstance(chunk, Exception):
                raise chunk
            replies += chunk
        metas = {} if isinstance(meta_raw, Exception) else {k.decode(): v for k, v in meta_raw.items()}
        out = []
        for sid, reply in zip(sids, replies):
            meta = orjson.loads(metas[sid]) if sid in metas else {}
            if isinstance(reply, Exception) or (not reply and not meta):
                continue  # gone since it was listed, or not a stream
            length, last_id, added, first, last, size, kind = reply or (0, b"0-0", -1, b"", b"", 0, b"")
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
        """Which Redis this is and how it fares (a few fields of INFO)."""
        info = await self.redis.info()
        keep = ("redis_version", "redis_mode", "uptime_in_seconds", "used_memory", "used_memory_human",
                "connected_clients", "aof_enabled", "role")
        return {key: _text(info[key]) for key in keep if key in info}


# KEYS: streams. For each, its summary without sending any entry: length, last generated id, entries
# ever added (-1 before Redis 7), oldest and newest entry ids, the newest entry's size in bytes and
# its image type when it starts with a JPEG or PNG signature; false
# for a key that is missing or not a stream. One call for all: a script call costs more than XINFO.
_SUMMARY_SCRIPT = r"""
local out = {}
for n = 1, #KEYS do
  local info = redis.pcall('XINFO', 'STREAM', KEYS[n])
  if type(info) ~= 'table' or info.err then
    out[n] = false
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
    out[n] = row
  end
end
return out
"""
