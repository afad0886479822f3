"""The Redis side of recordings: the shard leases, the active recording's state and cursors,
the recorders present, and the recordings directory the deployment uses.

Keys (behind the configured key prefix, all with one hash tag on a cluster):
- `recording:id`: the active recording's id (the original server's key, kept for its tools);
- `ptgstore:recording`: hash of the active recording: `id`, `streams` (JSON list, or `null`
  for every stream), `status` (`recording` or `stopping`), `started`, `shards` (how many),
  `segment:<k>` (the number of shard k's next segment file), `done:<k>` (shard k has written
  everything up to the stop), `stop` (JSON of the last entry id of each stream at stop);
- `ptgstore:recording:cursors`: stream id -> last entry id written in a committed segment;
- `ptgstore:recording:stats`: stream id -> JSON counts of committed entries;
- `ptgstore:recording:segments`: `<shard>:<number>` -> the writer token that committed it;
- `ptgstore:recording:gaps`: list of JSON gap records;
- `ptgstore:recording:writers`: set of JSON `{"host", "pid"}` of the processes that committed segments;
- `ptgstore:recorder:lease:<k>`: the token of the process writing shard k (short TTL);
- `ptgstore:recorders`: sorted set of the tokens of processes able to record (their recordings
  directory proven), scored by when their presence expires (Redis time, ms);
- `ptgstore:recordings:directory`: hash naming the recordings directory of the deployment: `id`
  (also in the directory's marker file), `path`, `host`, `since`.
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import orjson

from . import connections as conn
from .store import Store, StoreError, StoreUnavailable, _data, _guarded

EVENT_STREAM = "event:recording:id"

# KEYS: presence. ARGV: token, ttl ms (0: leave). Answers the number of processes present.
_PRESENT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if tonumber(ARGV[2]) > 0 then redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
else redis.call('ZREM', KEYS[1], ARGV[1]) end
return redis.call('ZCARD', KEYS[1])
"""
# KEYS: directory. ARGV: expected id ('' when none may be there), then field/value pairs.
_CLAIM = """
local id = redis.call('HGET', KEYS[1], 'id') or ''
if id ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: lease, state, cursors, stats, segments, gaps, writers.
# ARGV: token, shard, segment, cursors, stats, gaps (JSON), writer.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local field = 'segment:' .. ARGV[2]
if (redis.call('HGET', KEYS[2], field) or '1') ~= ARGV[3] then return 0 end
for sid, id in pairs(cjson.decode(ARGV[4])) do redis.call('HSET', KEYS[3], sid, id) end
for sid, stats in pairs(cjson.decode(ARGV[5])) do redis.call('HSET', KEYS[4], sid, cjson.encode(stats)) end
for _, gap in ipairs(cjson.decode(ARGV[6])) do redis.call('RPUSH', KEYS[6], cjson.encode(gap)) end
redis.call('HSET', KEYS[5], ARGV[2] .. ':' .. ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], field, tonumber(ARGV[3]) + 1)
redis.call('SADD', KEYS[7], ARGV[7])
return 1
"""
# KEYS: lease, state. ARGV: token, shard. Marks the shard done (only while holding its lease);
# answers 2 when every shard is done, 1 when this one is, 0 without the lease.
_DONE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'done:' .. ARGV[2], 1)
local shards = tonumber(redis.call('HGET', KEYS[2], 'shards') or '1')
for k = 0, shards - 1 do
  if redis.call('HEXISTS', KEYS[2], 'done:' .. k) == 0 then return 1 end
end
return 2
"""


def _by_count(sids: list[str], counts: dict[str, int]) -> list[tuple[int, list[str]]]:
    """The streams grouped by the count they want read, in order of count."""
    groups: dict[int, list[str]] = {}
    for sid in sids:
        groups.setdefault(counts[sid], []).append(sid)
    return sorted(groups.items())


def _text(value: bytes | str) -> str:
    """A reply's text (redis-py types replies as bytes or str)."""
    return value.decode() if isinstance(value, bytes) else value


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class RecordingStore:
    """Recording state shared by every API process, in the data store's Redis."""

    def __init__(self, store: Store):
        self.store = store
        self.redis = store.redis
        key = store.keys.recording  # (on a cluster, all in one slot)
        self.id_key = key("recording:id")
        self.state_key = key("ptgstore:recording")
        self.cursors_key = key("ptgstore:recording:cursors")
        self.stats_key = key("ptgstore:recording:stats")
        self.segments_key = key("ptgstore:recording:segments")
        self.gaps_key = key("ptgstore:recording:gaps")
        self.writers_key = key("ptgstore:recording:writers")
        self.lease_prefix = key("ptgstore:recorder:lease:")
        self.presence_key = key("ptgstore:recorders")
        self.directory_key = key("ptgstore:recordings:directory")
        self.errors_key = key("ptgstore:recording:errors")
        self.token = uuid.uuid4().hex
        self.on_roundtrip = None  # read by _guarded: Redis failures become StoreUnavailable (503 / 1011)
        self._renew = store.script(_RENEW)
        self._release = store.script(_RELEASE)
        self._commit = store.script(_COMMIT)
        self._done = store.script(_DONE)
        self._present = store.script(_PRESENT)
        self._claim = store.script(_CLAIM)

    def lease_key(self, shard: int) -> str:
        return f"{self.lease_prefix}{shard}"

    # -- the leases and the processes present -------------------------------------------------

    @_guarded
    async def acquire(self, shard: int, ttl_ms: int) -> bool:
        """Take shard `shard`'s lease when nobody holds it (or keep it when this process does)."""
        return (bool(await self.redis.set(self.lease_key(shard), self.token, nx=True, px=ttl_ms))
                or await self.renew(shard, ttl_ms))

    @_guarded
    async def renew(self, shard: int, ttl_ms: int) -> bool:
        return bool(await self._renew(keys=[self.lease_key(shard)], args=[self.token, ttl_ms]))

    @_guarded
    async def release(self, shard: int) -> None:
        await self._release(keys=[self.lease_key(shard)], args=[self.token])

    @_guarded
    async def present(self, ttl_ms: int) -> int:
        """Say this process can record for `ttl_ms` more (0: no longer); how many processes can."""
        return int(await self._present(keys=[self.presence_key], args=[self.token, ttl_ms]))

    # -- the recordings directory -------------------------------------------------------------

    @_guarded
    async def directory(self) -> dict[str, str] | None:
        """The deployment's recordings directory (`id`, `path`, `host`, `since`), None before any."""
        raw = await self.redis.hgetall(self.directory_key)
        return {_text(k): _text(v) for k, v in raw.items()} if raw else None

    @_guarded
    async def claim_directory(self, expected: str | None, record: dict[str, str]) -> bool:
        """Name the deployment's directory `record`, if the one named now is still `expected`
        (None: when none is named yet)."""
        pairs = [item for field_value in record.items() for item in field_value]
        return bool(await self._claim(keys=[self.directory_key], args=[expected or "", *pairs]))

    # -- the active recording -----------------------------------------------------------------

    @_guarded
    async def state(self) -> dict | None:
        raw = await self.redis.hgetall(self.state_key)
        if not raw or b"id" not in raw:
            return None
        state: dict = {_text(k): _text(v) for k, v in raw.items()}
        state["streams"] = orjson.loads(state.get("streams", "null"))
        state["shards"] = int(state.get("shards", 1))
        state["stop"] = orjson.loads(state["stop"]) if state.get("stop") else None
        return state

    @_guarded
    async def active_id(self) -> str | None:
        state = await self.state()
        return state["id"] if state else None

    @_guarded
    async def start(self, rec_id: str, streams: list[str] | None, shards: int) -> None:
        """Make `rec_id` the active recording from now on, its streams shared out in `shards`
        shards; StoreError when one is active."""
        if not await self.redis.hsetnx(self.state_key, "id", rec_id):
            active = await self.redis.hget(self.state_key, "id")
            raise StoreError(f"recording {_text(active) if active else '?'} is active: stop it first")
        try:
            await self._begin(rec_id, streams, shards)
        except BaseException:
            await self.redis.delete(self.state_key)  # a half-made start must not look active
            raise
        await self.store.add([(EVENT_STREAM, "*", rec_id.encode())])

    async def _begin(self, rec_id: str, streams: list[str] | None, shards: int) -> None:
        known = streams if streams is not None else await self.recordable_streams()
        heads = await self.heads(known)
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in (self.cursors_key, self.stats_key, self.segments_key, self.gaps_key, self.writers_key):
                pipe.delete(key)
            if known:
                pipe.hset(self.cursors_key, mapping={sid: heads[sid]["last"] for sid in known})
                # how many entries each stream had received: counting from there tells trimmed ones
                pipe.hset(self.stats_key, mapping={sid: orjson.dumps({"index": heads[sid]["added"]}) for sid in known})
            pipe.hset(self.state_key, mapping={
                "streams": orjson.dumps(streams), "shards": shards, "started": now_iso(), "status": "recording"})
            pipe.set(self.id_key, rec_id)
            await pipe.execute()

    @_guarded
    async def heads(self, sids: list[str]) -> dict[str, dict]:
        """Per stream, at one moment each: last id, entries ever added, entries kept, first kept id."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.xinfo_stream(self.store.key(sid))
            replies = await pipe.execute(raise_on_error=False)
        out = {}
        for sid, reply in zip(sids, replies):
            if isinstance(reply, conn.ResponseError) and "WRONGTYPE" in str(reply):
                raise StoreError(f"{sid} is not a stream")
            if not isinstance(reply, dict):
                out[sid] = {"last": "0-0", "added": 0, "length": 0, "first": None}
                continue
            text = {(k.decode() if isinstance(k, bytes) else k): v for k, v in reply.items()}
            last = text.get("last-generated-id") or b"0-0"
            first = text.get("first-entry")
            out[sid] = {"last": last.decode() if isinstance(last, bytes) else str(last),
                        "added": int(text.get("entries-added", 0) or 0), "length": int(text.get("length", 0)),
                        "first": (first[0].decode() if isinstance(first[0], bytes) else first[0]) if first else None}
        return out

    @_guarded
    async def stop(self) -> str | None:
        """Fix where the active recording ends (now) and ask the recorder to finish it; its id."""
        state = await self.state()
        if state is None:
            return None
        if state.get("status") != "stopping":
            sids = set(state["streams"]) if state["streams"] is not None else set(await self.recordable_streams())
            sids |= {_text(k) for k in await self.redis.hkeys(self.cursors_key)}
            ordered = sorted(sids)
            last = await self.store.last_ids(ordered) if ordered else []
            await self.redis.hset(self.state_key, mapping={
                "status": "stopping", "stop": orjson.dumps(dict(zip(ordered, last)))})
            await self.store.add([(EVENT_STREAM, "*", b"")])
        return state["id"]

    @_guarded
    async def recordable_streams(self) -> list[str]:
        return [sid for sid in await self.store.stream_ids() if sid != EVENT_STREAM]

    @_guarded
    async def progress(self) -> tuple[dict[str, str], dict[str, dict], list[dict], dict[str, str]]:
        """Cursors, stats, gaps and committed segments (`<shard>:<number>` -> token) of the active
        recording."""
        async with self.redis.pipeline(transaction=True) as pipe:
            # (raw commands: redis-py before 8 hands a cluster transaction's reply callbacks a `keys`
            # argument that HGETALL's does not take)
            pipe.execute_command("HGETALL", self.cursors_key)
            pipe.execute_command("HGETALL", self.stats_key)
            pipe.execute_command("LRANGE", self.gaps_key, 0, -1)
            pipe.execute_command("HGETALL", self.segments_key)
            cursors, stats, gaps, segments = await pipe.execute()
        return ({k.decode(): v.decode() for k, v in cursors.items()},
                {k.decode(): orjson.loads(v) for k, v in stats.items()},
                [orjson.loads(g) for g in gaps],
                {k.decode(): v.decode() for k, v in segments.items()})

    @_guarded
    async def writers(self) -> list[dict]:
        """The processes (`host`, `pid`) that committed segments of the active recording."""
        members = await self.redis.smembers(self.writers_key)
        return sorted((orjson.loads(m) for m in members), key=lambda w: (w["host"], w["pid"]))

    @_guarded
    async def commit(self, shard: int, segment: int, cursors: dict[str, str], stats: dict[str, dict],
                     gaps: list[dict], writer: dict) -> bool:
        """Record a finished segment of a shard: advance the cursors, add its stats and the gaps found
        before its entries, and its writer, all at once and only while holding the shard's lease."""
        try:
            done = await self._commit(
                keys=[self.lease_key(shard), self.state_key, self.cursors_key, self.stats_key, self.segments_key,
                      self.gaps_key, self.writers_key],
                args=[self.token, str(shard), str(segment), orjson.dumps(cursors or {}), orjson.dumps(stats or {}),
                      orjson.dumps(gaps) if gaps else "[]", orjson.dumps(writer)])
        except conn.ResponseError as exc:
            raise StoreError(f"commit of segment {shard}:{segment} failed: {exc}") from None
        return bool(done)

    @_guarded
    async def shard_done(self, shard: int) -> int:
        """Mark a shard written up to the stop (holding its lease): 2 when every shard is done, 1
        when others are not yet, 0 when the lease is lost."""
        return int(await self._done(keys=[self.lease_key(shard), self.state_key], args=[self.token, str(shard)]))

    @_guarded
    async def finish(self, rec_id: str, error: str | None = None) -> None:
        """Forget the active recording (its info now lives in its directory)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in (self.state_key, self.cursors_key, self.stats_key, self.segments_key, self.gaps_key,
                        self.writers_key):
                pipe.delete(key)
            pipe.delete(self.id_key)
            if error:
                pipe.hset(self.errors_key, rec_id, error)
            await pipe.execute()

    @_guarded
    async def error_of(self, rec_id: str) -> str | None:
        value = await self.redis.hget(self.errors_key, rec_id)
        return _text(value) if value else None

    @_guarded
    async def forget_error(self, rec_id: str, new_id: str | None = None) -> None:
        value = await self.redis.hget(self.errors_key, rec_id)
        await self.redis.hdel(self.errors_key, rec_id)
        if value and new_id:
            await self.redis.hset(self.errors_key, new_id, value)

    # -- following streams --------------------------------------------------------------------

    def tail(self):
        """The recorder's own connection for its blocking reads (`read_blocking`)."""
        return self.store.connections.tail(self.id_key)

    async def read_blocking(self, tail, cursors: dict[str, str], counts: dict[str, int], block_ms: int) -> list:
        """Up to `counts[sid]` entries of each stream after its cursor, `(sid, entry id, bytes)`,
        waiting up to `block_ms` for the first, on the recorder's own connection. Streams wanting
        different counts (small entries and large ones) are read by one XREAD per count, without
        waiting, then, when none had anything, by one that waits. On a cluster, streams in several
        slots cannot be read by one XREAD: each slot's are read without waiting, and when none had
        anything the call waits a tenth of `block_ms` (at most 100 ms) before answering."""
        sids = list(cursors)
        groups = self.store._by_slot(sids)
        try:
            if len(groups) == 1:
                by_count = _by_count(sids, counts)
                key = self.store.key(sids[0])
                if len(by_count) > 1:
                    replies = await tail.pipelined([self._xread(c, group, cursors) for c, group in by_count], key=key)
                    out = self._entries(sids, replies)
                    if out:
                        return out
                count = min(counts.values()) if len(by_count) > 1 else by_count[0][0]
                (reply,) = await tail.pipelined([self._xread(count, sids, cursors, block_ms)], key=key)
                return self._entries(sids, [reply])
            async with self.redis.pipeline(transaction=False) as pipe:
                for group in groups:
                    for count, same in _by_count(group, counts):
                        pipe.execute_command(*self._xread(count, same, cursors))
                replies = await pipe.execute()
        except (*conn.UNAVAILABLE, conn.ResponseError) as exc:
            raise StoreUnavailable(f"store unavailable: {conn.reason(exc)}") from exc
        out = self._entries(sids, replies)
        if not out:
            await asyncio.sleep(min(block_ms / 10, 100) / 1000)
        return out

    def _xread(self, count: int, sids: list[str], cursors: dict[str, str], block_ms: int | None = None) -> tuple:
        block = ("BLOCK", block_ms) if block_ms is not None else ()
        return ("XREAD", "COUNT", count, *block, "STREAMS", *(self.store.key(s) for s in sids),
                *(cursors[s] for s in sids))

    def _entries(self, sids: list[str], replies: list) -> list:
        by_key = {self.store.key(s): s for s in sids}
        out = []
        for reply in replies:
            if not reply:
                continue
            for key, records in reply.items() if isinstance(reply, dict) else reply:
                sid = by_key[key.decode("utf-8", "surrogateescape")]
                out += [(sid, entry_id.decode(), _data(fields)) for entry_id, fields in records]
        return out

    @_guarded
    async def metas(self, sids: list[str]) -> dict[str, tuple[dict, int]]:
        """Each stream's metadata and `max_len` (its own, else the default)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hmget(self.store.keys.meta(sid), ["meta", "max_len"])
            values = await pipe.execute() if sids else []
        return {sid: (orjson.loads(meta) if meta else {}, int(max_len) if max_len else self.store.default_max_len)
                for sid, (meta, max_len) in zip(sids, values)}
