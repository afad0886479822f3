"""The streams as a whole, besides their entries: which exist, their metadata (retention included),
their info and the dashboard's summaries. `Store`'s methods of those names call these."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Sequence

import orjson

from . import connections as conn
from .framing import FramingError, writable_stream_id
from .keys import META_SUFFIX
from .luascripts import lua
from .replies import entry_time_iso, text
from .storeerrors import StoreError

if TYPE_CHECKING:
    from .store import Store

SUMMARY_CHUNK = 100  # streams per summary script call: Redis serves others between two (about 2 ms each)


def validate_max_len(meta: dict) -> None:
    """Refuse a `max_len` but a whole number from 1 to 10**12 (Lua writes larger ones as 1e+14: XTRIM refuses)."""
    if "max_len" in meta:
        value = meta["max_len"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**12:
            raise StoreError(f"max_len must be a whole number from 1 to 10**12, not {value!r}")


async def stream_ids(store: Store) -> list[str]:
    """Sorted ids of streams holding entries or having metadata (on every master of a cluster)."""
    found = set()
    pattern = store.keys.pattern
    async for key in store.connections.scan(pattern, "stream"):
        found.add(store.keys.sid_of(key.decode("utf-8", "surrogateescape")))
    async for key in store.connections.scan(pattern[:-1] + "*" + META_SUFFIX, "hash"):
        found.add(store.keys.sid_of(key.decode("utf-8", "surrogateescape"), META_SUFFIX))
    valid = []
    for sid in found:
        if sid is None:  # not a key of ptgstore's layout
            continue
        try:
            valid.append(writable_stream_id(sid))  # the server's own streams are not listed
        except FramingError:
            continue
    return sorted(valid)


async def info(store: Store, sid: str) -> dict | None:
    """Metadata, length and first/last entries of a stream; None when it does not exist."""
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.hget(store.keys.meta(sid), "meta")
        pipe.xinfo_stream(store.key(sid))
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
    out = {key: value for key, value in text(stream).items() if key not in ("first-entry", "last-entry")}
    first = stream.get("first-entry")
    last = stream.get("last-entry")
    out.update({
        "sid": sid,
        "meta": orjson.loads(meta_raw) if meta_raw else {},
        "length": stream.get("length", 0),
        "first-entry": text(first[0]) if first else None,
        "last-entry": text(last[0]) if last else None,
    })
    out["first-entry-time"] = entry_time_iso(out["first-entry"])
    out["last-entry-time"] = entry_time_iso(out["last-entry"])
    return out


async def set_meta(store: Store, sid: str, meta: dict, override: bool = False) -> dict:
    """Merge `meta` into the stream's metadata (or replace it); `max_len` sets retention (also kept
    apart in the metadata hash, for the add scripts)."""
    validate_max_len(meta)
    meta_key = store.keys.meta(sid)

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

    return await store.redis.transaction(update, meta_key, value_from_callable=True)


async def summaries(store: Store, sids: Sequence[str]) -> list[dict]:
    """A short summary of each stream that exists, in one round trip whatever their number (on a
    cluster, one per master), without any entry's bytes leaving Redis (lua/summary.lua): length,
    newest and oldest ids, entries ever added (Redis 7+, else None), the newest entry's size and
    image type, max_len and metadata."""
    chunks = []
    for group in store._by_slot(sids):
        chunks += [group[start:start + SUMMARY_CHUNK] for start in range(0, len(group), SUMMARY_CHUNK)]
    keys = [[k for sid in chunk for k in (store.key(sid), store.keys.meta(sid))] for chunk in chunks]
    if store.cluster:  # (a cluster pipeline runs no scripts: the chunks go out side by side)
        script = store.script(lua("summary.lua"))
        replies = await asyncio.gather(*(script(keys=k) for k in keys), return_exceptions=True)
    else:
        # one pipeline: redis-py's script object loads the script when Redis lacks it
        registered = store.redis.register_script(lua("summary.lua"))
        async with store.redis.pipeline(transaction=False) as pipe:
            for chunk_keys in keys:
                await registered(keys=chunk_keys, client=pipe)
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
            "sid": sid, "length": length, "last-generated-id": text(last_id),
            "entries-added": added if added >= 0 else None,
            "first-entry": text(first) or None, "last-entry": text(last) or None, "last-entry-size": size,
            "last-entry-type": text(kind) or None,
            "max_len": meta.get("max_len", store.default_max_len), "meta": meta,
        })
    return out
