"""The Redis side of recordings: the shard leases, the active recording's state and cursors,
the recorders present, and the recordings directory the deployment uses. The keys are
`keys.RecordingKeys` (behind the configured key prefix, all with one hash tag on a cluster); the
connections and the guard against an unavailable Redis are the `Store`'s.
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import orjson

from ..connections import ResponseError
from ..luascripts import lua
from ..store import Store, StoreError

EVENT_STREAM = "event:recording:id"
guarded = Store.guarded


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
        self.keys = store.keys.recordings  # (on a cluster, all in one slot)
        self.token = uuid.uuid4().hex
        self.on_roundtrip = None  # read by Store.guarded: Redis failures become StoreUnavailable (503 / 1011)
        self._renew = store.script(lua("recording_renew.lua"))
        self._release = store.script(lua("recording_release.lua"))
        self._commit = store.script(lua("recording_commit.lua"))
        self._done = store.script(lua("recording_done.lua"))
        self._present = store.script(lua("recording_present.lua"))
        self._claim = store.script(lua("recording_claim.lua"))

    # -- the leases and the processes present -------------------------------------------------

    @guarded
    async def acquire(self, shard: int, ttl_ms: int) -> bool:
        """Take shard `shard`'s lease when nobody holds it (or keep it when this process does)."""
        return (bool(await self.redis.set(self.keys.lease(shard), self.token, nx=True, px=ttl_ms))
                or await self.renew(shard, ttl_ms))

    @guarded
    async def renew(self, shard: int, ttl_ms: int) -> bool:
        return bool(await self._renew(keys=[self.keys.lease(shard)], args=[self.token, ttl_ms]))

    @guarded
    async def release(self, shard: int) -> None:
        await self._release(keys=[self.keys.lease(shard)], args=[self.token])

    @guarded
    async def present(self, ttl_ms: int) -> int:
        """Say this process can record for `ttl_ms` more (0: no longer); how many processes can."""
        return int(await self._present(keys=[self.keys.presence], args=[self.token, ttl_ms]))

    # -- the recordings directory -------------------------------------------------------------

    @guarded
    async def directory(self) -> dict[str, str] | None:
        """The deployment's recordings directory (`id`, `path`, `host`, `since`), None before any."""
        raw = await self.redis.hgetall(self.keys.directory)
        return {_text(k): _text(v) for k, v in raw.items()} if raw else None

    @guarded
    async def claim_directory(self, expected: str | None, record: dict[str, str]) -> bool:
        """Name the deployment's directory `record`, if the one named now is still `expected`
        (None: when none is named yet)."""
        pairs = [item for field_value in record.items() for item in field_value]
        return bool(await self._claim(keys=[self.keys.directory], args=[expected or "", *pairs]))

    # -- the active recording -----------------------------------------------------------------

    @guarded
    async def state(self) -> dict | None:
        raw = await self.redis.hgetall(self.keys.state)
        if not raw or b"id" not in raw:
            return None
        state: dict = {_text(k): _text(v) for k, v in raw.items()}
        state["streams"] = orjson.loads(state.get("streams", "null"))
        state["shards"] = int(state.get("shards", 1))
        state["stop"] = orjson.loads(state["stop"]) if state.get("stop") else None
        return state

    @guarded
    async def active_id(self) -> str | None:
        state = await self.state()
        return state["id"] if state else None

    @guarded
    async def start(self, rec_id: str, streams: list[str] | None, shards: int) -> None:
        """Make `rec_id` the active recording from now on, its streams shared out in `shards`
        shards; StoreError when one is active."""
        if not await self.redis.hsetnx(self.keys.state, "id", rec_id):
            active = await self.redis.hget(self.keys.state, "id")
            raise StoreError(f"recording {_text(active) if active else '?'} is active: stop it first")
        try:
            await self._begin(rec_id, streams, shards)
        except BaseException:
            await self.redis.delete(self.keys.state)  # a half-made start must not look active
            raise
        await self.store.add([(EVENT_STREAM, "*", rec_id.encode())])

    async def _begin(self, rec_id: str, streams: list[str] | None, shards: int) -> None:
        known = streams if streams is not None else await self.recordable_streams()
        heads = await self.heads(known)
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in (self.keys.cursors, self.keys.stats, self.keys.segments, self.keys.gaps, self.keys.writers):
                pipe.delete(key)
            if known:
                pipe.hset(self.keys.cursors, mapping={sid: heads[sid]["last"] for sid in known})
                # how many entries each stream had received: counting from there tells trimmed ones
                pipe.hset(self.keys.stats, mapping={sid: orjson.dumps({"index": heads[sid]["added"]}) for sid in known})
            pipe.hset(self.keys.state, mapping={
                "streams": orjson.dumps(streams), "shards": shards, "started": now_iso(), "status": "recording"})
            pipe.set(self.keys.id, rec_id)
            await pipe.execute()

    @guarded
    async def heads(self, sids: list[str]) -> dict[str, dict]:
        """Per stream, at one moment each: last id, entries ever added, entries kept, first kept id."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.xinfo_stream(self.store.key(sid))
            replies = await pipe.execute(raise_on_error=False)
        out = {}
        for sid, reply in zip(sids, replies):
            if isinstance(reply, ResponseError) and "WRONGTYPE" in str(reply):
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

    @guarded
    async def stop(self) -> str | None:
        """Fix where the active recording ends (now) and ask the recorder to finish it; its id."""
        state = await self.state()
        if state is None:
            return None
        if state.get("status") != "stopping":
            sids = set(state["streams"]) if state["streams"] is not None else set(await self.recordable_streams())
            sids |= {_text(k) for k in await self.redis.hkeys(self.keys.cursors)}
            ordered = sorted(sids)
            last = await self.store.last_ids(ordered) if ordered else []
            await self.redis.hset(self.keys.state, mapping={
                "status": "stopping", "stop": orjson.dumps(dict(zip(ordered, last)))})
            await self.store.add([(EVENT_STREAM, "*", b"")])
        return state["id"]

    @guarded
    async def recordable_streams(self) -> list[str]:
        return [sid for sid in await self.store.stream_ids() if sid != EVENT_STREAM]

    @guarded
    async def progress(self) -> tuple[dict[str, str], dict[str, dict], list[dict], dict[str, str]]:
        """Cursors, stats, gaps and committed segments (`<shard>:<number>` -> token) of the active
        recording."""
        async with self.redis.pipeline(transaction=True) as pipe:
            # (raw commands: redis-py before 8 hands a cluster transaction's reply callbacks a `keys`
            # argument that HGETALL's does not take)
            pipe.execute_command("HGETALL", self.keys.cursors)
            pipe.execute_command("HGETALL", self.keys.stats)
            pipe.execute_command("LRANGE", self.keys.gaps, 0, -1)
            pipe.execute_command("HGETALL", self.keys.segments)
            cursors, stats, gaps, segments = await pipe.execute()
        return ({k.decode(): v.decode() for k, v in cursors.items()},
                {k.decode(): orjson.loads(v) for k, v in stats.items()},
                [orjson.loads(g) for g in gaps],
                {k.decode(): v.decode() for k, v in segments.items()})

    @guarded
    async def writers(self) -> list[dict]:
        """The processes (`host`, `pid`) that committed segments of the active recording."""
        members = await self.redis.smembers(self.keys.writers)
        return sorted((orjson.loads(m) for m in members), key=lambda w: (w["host"], w["pid"]))

    @guarded
    async def commit(self, shard: int, segment: int, cursors: dict[str, str], stats: dict[str, dict],
                     gaps: list[dict], writer: dict) -> bool:
        """Record a finished segment of a shard: advance the cursors, add its stats and the gaps found
        before its entries, and its writer, all at once and only while holding the shard's lease."""
        try:
            done = await self._commit(
                keys=[self.keys.lease(shard), self.keys.state, self.keys.cursors, self.keys.stats, self.keys.segments,
                      self.keys.gaps, self.keys.writers],
                args=[self.token, str(shard), str(segment), orjson.dumps(cursors or {}), orjson.dumps(stats or {}),
                      orjson.dumps(gaps) if gaps else "[]", orjson.dumps(writer)])
        except ResponseError as exc:
            raise StoreError(f"commit of segment {shard}:{segment} failed: {exc}") from None
        return bool(done)

    @guarded
    async def shard_done(self, shard: int) -> int:
        """Mark a shard written up to the stop (holding its lease): 2 when every shard is done, 1
        when others are not yet, 0 when the lease is lost."""
        return int(await self._done(keys=[self.keys.lease(shard), self.keys.state], args=[self.token, str(shard)]))

    @guarded
    async def finish(self, rec_id: str, error: str | None = None) -> None:
        """Forget the active recording (its info now lives in its directory)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in (self.keys.state, self.keys.cursors, self.keys.stats, self.keys.segments, self.keys.gaps,
                        self.keys.writers):
                pipe.delete(key)
            pipe.delete(self.keys.id)
            if error:
                pipe.hset(self.keys.errors, rec_id, error)
            await pipe.execute()

    @guarded
    async def error_of(self, rec_id: str) -> str | None:
        value = await self.redis.hget(self.keys.errors, rec_id)
        return _text(value) if value else None

    @guarded
    async def forget_error(self, rec_id: str, new_id: str | None = None) -> None:
        value = await self.redis.hget(self.keys.errors, rec_id)
        await self.redis.hdel(self.keys.errors, rec_id)
        if value and new_id:
            await self.redis.hset(self.keys.errors, new_id, value)

    # -- following streams --------------------------------------------------------------------

    def tail(self):
        """The recorder's own connection for its blocking reads (`read_blocking`)."""
        return self.store.tail_at(self.keys.id)

    async def read_blocking(self, tail, cursors: dict[str, str], counts: dict[str, int], block_ms: int) -> list:
        """Up to `counts[sid]` entries of each stream after its cursor, `(sid, entry id, bytes)`,
        waiting up to `block_ms` for the first, on the recorder's own connection. Streams wanting
        different counts (small entries and large ones) are read by one XREAD per count, without
        waiting, then, when none had anything, by one that waits. On a cluster, streams in several
        slots cannot be read by one XREAD: each slot's are read without waiting, and when none had
        anything the call waits a tenth of `block_ms` (at most 100 ms) before answering."""
        sids = list(cursors)
        groups = self.store.by_slot(sids)
        if len(groups) == 1:
            by_count = _by_count(sids, counts)
            if len(by_count) > 1:
                out = await self.store.read_after(by_count, cursors, tail=tail)
                if out:
                    return out
            count = min(counts.values()) if len(by_count) > 1 else by_count[0][0]
            return await self.store.read_after([(count, sids)], cursors, tail=tail, block_ms=block_ms)
        out = await self.store.read_after([read for group in groups for read in _by_count(group, counts)], cursors)
        if not out:
            await asyncio.sleep(min(block_ms / 10, 100) / 1000)
        return out

    @guarded
    async def metas(self, sids: list[str]) -> dict[str, tuple[dict, int]]:
        """Each stream's metadata and `max_len` (its own, else the default)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hmget(self.store.keys.meta(sid), ["meta", "max_len"])
            values = await pipe.execute() if sids else []
        return {sid: (orjson.loads(meta) if meta else {}, int(max_len) if max_len else self.store.default_max_len)
                for sid, (meta, max_len) in zip(sids, values)}
