"""The key layout of earlier versions: every stream's metadata in two global hashes
(`ptgstore:meta`, `ptgstore:maxlen`, behind the key prefix), moved at start-up into each stream's
own metadata hash (`keys.meta`). `Store.migrate` calls this."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .connections import WatchError

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("ptgstore.migration")


async def migrate(store: Store) -> int:
    """Move metadata from the global hashes into each stream's own hash; idempotent, safe with
    several processes starting at once (the first one moves, the others find nothing). Returns how
    many streams' metadata moved. (A cluster never had that layout: nothing to do there.)"""
    legacy = (store.keys.legacy_meta, store.keys.legacy_maxlen)
    if store.cluster or not await store.redis.exists(*legacy):
        return 0

    async def move(pipe):
        metas, max_lens = await pipe.hgetall(legacy[0]), await pipe.hgetall(legacy[1])
        pipe.multi()
        for sid in {*metas, *max_lens}:
            name = store.keys.meta(sid.decode("utf-8", "surrogateescape"))
            if sid in metas:
                pipe.hset(name, "meta", metas[sid])
            if sid in max_lens:
                pipe.hset(name, "max_len", max_lens[sid])
        pipe.delete(*legacy)
        return len({*metas, *max_lens})

    try:
        moved = await store.redis.transaction(move, *legacy, value_from_callable=True)
    except WatchError:
        return 0
    log.info("moved the metadata of %d streams to per-stream keys (the layout of this version)", moved)
    return moved
