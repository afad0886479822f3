"""Deleting streams, and hearing of deletions made through any process. A delete bumps each
stream's epoch (its generation) in the same transaction, so that a follower reading the epoch with
its entries can tell a re-created stream from the one it buffered, and is announced at once on the
deletions channel, so that every process's followers stop serving from memory. `Store.delete` and
`Store.watch_deletes` call these."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Sequence

from . import connections as conn
from .backoff import Backoff
from .connections import ResponseError

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("ptgstore.deletions")


async def delete(store: Store, sids: Sequence[str]) -> list[str]:
    """Delete streams' entries and metadata; return the ids that existed. On a cluster, the
    streams of one slot are deleted together, and the news follows each transaction."""
    existed: set[str] = set()
    for group in store._by_slot(sids):
        async with store.redis.pipeline(transaction=True) as pipe:
            for sid in group:
                pipe.delete(store.key(sid))
                pipe.delete(store.keys.meta(sid))
                pipe.incr(store.epoch_key(sid))
                if not store.cluster:
                    pipe.publish(store.keys.deleted_channel, sid)
            replies = await pipe.execute()
        step = 3 if store.cluster else 4
        existed.update(sid for i, sid in enumerate(group) if replies[step * i] or replies[step * i + 1])
        for sid in group:
            store._max_lens.pop(sid, None)  # (the store's cache of retention: the default from now on)
            if store.cluster:  # PUBLISH reaches every node of the cluster
                await store.redis.execute_command("PUBLISH", store.keys.deleted_channel, sid,
                                                  target_nodes=store.redis.RANDOM)
    return [sid for sid in sids if sid in existed]


async def watch(store: Store, on_deleted) -> None:
    """Call `on_deleted(sid)` for each stream deleted through any process on this Redis, and
    `on_deleted(None)` after a lost subscription is back (deletes may have been missed meanwhile).
    Runs until cancelled; an outage is waited out."""
    backoff = Backoff()
    while True:
        try:
            async with store.connections.subscribed(store.keys.deleted_channel) as pubsub:
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
