"""The Redis side of recordings: the recorder lease, the active recording's state and cursors.

Keys (behind the configured key prefix):
- `recording:id`: the active recording's id (the original server's key, kept for its tools);
- `ptgstore:recording`: hash of the active recording: `id`, `streams` (JSON list, or `null`
  for every stream), `status` (`recording` or `stopping`), `started`, `segment` (the number of
  the next segment file), `stop` (JSON of the last entry id of each stream at stop);
- `ptgstore:recording:cursors`: stream id -> last entry id written in a committed segment;
- `ptgstore:recording:stats`: stream id -> JSON counts of committed entries;
- `ptgstore:recording:segments`: segment number -> the writer token that committed it;
- `ptgstore:recording:gaps`: list of JSON gap records;
- `ptgstore:recorder:lease`: the token of the process whose recorder writes (short TTL).
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import orjson

from . import connections as conn
from .store import Store, StoreError, StoreUnavailable, _data, _guarded

EVENT_STREAM = "event:recording:id"

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: lease, state, cursors, stats, segments, gaps. ARGV: token, segment, cursors, stats, gaps (JSON).
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'segment') ~= ARGV[2] then return 0 end
for sid, id in pairs(cjson.decode(ARGV[3])) do redis.call('HSET', KEYS[3], sid, id) end
for sid, stats in pairs(cjson.decode(ARGV[4])) do redis.call('HSET', KEYS[4], sid, cjson.encode(stats)) end
for _, gap in ipairs(cjson.decode(ARGV[5])) do redis.call('RPUSH', KEYS[6], cjson.encode(gap)) end
redis.call('HSET', KEYS[5], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], 'segment', tonumber(ARGV[2]) + 1)
return 1
"""


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
        self.lease_key = key("ptgstore:recorder:lease")
        self.errors_key = key("ptgstore:recording:errors")
        self.token = uuid.uuid4().hex
        self.on_roundtrip = None  # read by _guarded: Redis failures become StoreUnavailable (503 / 1011)
        self._renew = store.script(_RENEW)
        self._release = store.script(_RELEASE)
        self._commit = store.script(_COMMIT)

    # -- the lease ----------------------------------------------------------------------------

    @_guarded
    async def acquire(self, ttl_ms: int) -> bool:
        """Take the lease when nobody holds it (or keep it when this process does)."""
        return bool(await self.redis.set(self.lease_key, self.token, nx=True, px=ttl_ms)) or await self.renew(ttl_ms)

    @_guarded
    async def renew(self, ttl_ms: int) -> bool:
        return bool(await self._renew(keys=[self.lease_key], args=[self.token, ttl_ms]))

    @_guarded
    async def release(self) -> None:
        await self._release(keys=[self.lease_key], args=[self.token])

    # -- the active recording -----------------------------------------------------------------

    @_guarded
    async def state(self) -> dict | None:
        raw = await self.redis.hgetall(self.state_key)
        if not raw or b"id" not in raw:
            return None
        state: dict = {_text(k): _text(v) for k, v in raw.items()}
        state["streams"] = orjson.loads(state.get("streams", "null"))
        state["segment"] = int(state.get("segment", 1))
        state["stop"] = orjson.loads(state["stop"]) if state.get("stop") else None
        return state

    @_guarded
    async def active_id(self) -> str | None:
        state = await self.state()
        return state["id"] if state else None

    @_guarded
    async def start(self, rec_id: str, streams: list[str] | None) -> None:
        """Make `rec_id` the active recording from now on; StoreError when one is active."""
        if not await self.redis.hsetnx(self.state_key, "id", rec_id):
            active = await self.redis.hget(self.state_key, "id")
            raise StoreError(f"recording {_text(active) if active else '?'} is active: stop it first")
        try:
            await self._begin(rec_id, streams)
        except BaseException:
            await self.redis.delete(self.state_key)  # a half-made start must not look active
            raise
        await self.store.add([(EVENT_STREAM, "*", rec_id.encode())])

    async def _begin(self, rec_id: str, streams: list[str] | None) -> None:
        known = streams if streams is not None else await self.recordable_streams()
        heads = await self.heads(known)
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in (self.cursors_key, self.stats_key, self.segments_key, self.gaps_key):
                pipe.delete(key)
            if known:
                pipe.hset(self.cursors_key, mapping={sid: heads[sid]["last"] for sid in known})
                # how many entries each stream had received: counting from there tells trimmed ones
                pipe.hset(self.stats_key, mapping={sid: orjson.dumps({"index": heads[sid]["added"]}) for sid in known})
            pipe.hset(self.state_key, mapping={
                "streams": orjson.dumps(streams), "segment": 1, "started": now_iso(), "status": "recording"})
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
        """Cursors, stats, gaps and committed segments of the active recording."""
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
    async def commit(self, segment: int, cursors: dict[str, str], stats: dict[str, dict], gaps: list[dict]) -> bool:
        """Record a finished segment: advance the cursors, add its stats and the gaps found before its
        entries, all at once and only while holding the lease."""
        try:
            done = await self._commit(
                keys=[self.lease_key, self.state_key, self.cursors_key, self.stats_key, self.segments_key,
                      self.gaps_key],
                args=[self.token, str(segment), orjson.dumps(cursors or {}), orjson.dumps(stats or {}),
                      orjson.dumps(gaps) if gaps else "[]"])
        except conn.ResponseError as exc:
            raise StoreError(f"commit of segment {segment} failed: {exc}") from None
        return bool(done)

    @_guarded
    async def finish(self, rec_id: str, error: str | None = None) -> None:
        """Forget the active recording (its info now lives in its directory)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in (self.state_key, self.cursors_key, self.stats_key, self.segments_key, self.gaps_key):
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

    async def read_blocking(self, tail, cursors: dict[str, str], count: int, block_ms: int) -> list:
        """Up to `count` entries per stream after each cursor, `(sid, entry id, bytes)`, waiting up to
        `block_ms` for the first; on the recorder's own connection. On a cluster, streams in several
        slots cannot be read by one XREAD: each slot's are read without waiting, and when none had
        anything the call waits a tenth of `block_ms` (at most 100 ms) before answering."""
        groups = self.store._by_slot(list(cursors))
        if len(groups) == 1:
            sids = groups[0]
            command = ("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS",
                       *(self.store.key(s) for s in sids), *(cursors[s] for s in sids))
            try:
                (reply,) = await tail.pipelined([command], key=self.store.key(sids[0]))
            except (*conn.UNAVAILABLE, conn.ResponseError) as exc:
                raise StoreUnavailable(f"store unavailable: {conn.reason(exc)}") from exc
            return self._entries(sids, [reply])
        async with self.redis.pipeline(transaction=False) as pipe:
            for sids in groups:
                pipe.execute_command("XREAD", "COUNT", count, "STREAMS", *(self.store.key(s) for s in sids),
                                     *(cursors[s] for s in sids))
            try:
                replies = await pipe.execute()
            except (*conn.UNAVAILABLE, conn.ResponseError) as exc:
                raise StoreUnavailable(f"store unavailable: {conn.reason(exc)}") from exc
        out = self._entries(list(cursors), replies)
        if not out:
            await asyncio.sleep(min(block_ms / 10, 100) / 1000)
        return out

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
    async def metas(self, sids: list[str]) -> dict[str, dict]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hget(self.store.keys.meta(sid), "meta")
            values = await pipe.execute() if sids else []
        return {sid: orjson.loads(v) if v else {} for sid, v in zip(sids, values)}
