"""ptgstore's own keys checked at start-up: one that holds another type than ptgstore writes there
(made by another tool, or by a client of a version that let stream ids name them) would fail the
start or every recording route. It is removed, and the log says which key and what it held."""
from __future__ import annotations

import logging

from . import connections as conn
from .framing import SERVER_STREAMS
from .keys import META_SUFFIX
from .store import Store

log = logging.getLogger("ptgstore.ownkeys")


def owned_keys(store: Store) -> dict[str, str]:
    """Every key of ptgstore's own state, with the Redis type it holds."""
    keys = store.keys
    # (the recorders' per-shard leases are left out: strings with a short expiry, taken with SET NX)
    owned: dict[str, str] = {
             keys.secret_fingerprint: "string", keys.legacy_meta: "hash", keys.legacy_maxlen: "hash",
             **keys.recordings.owned()}
    for sid in SERVER_STREAMS:
        owned[keys.stream(sid)] = "stream"
        owned[keys.stream(sid) + META_SUFFIX] = "hash"
    return owned


async def repair(store: Store) -> list[str]:
    """Remove own keys of the wrong type; returns their names. A Redis down at start-up is left to the
    routes (StoreUnavailable is logged, not raised)."""
    removed = []
    try:
        for key, expected in owned_keys(store).items():
            found = await store.connections.once(key, "TYPE", key)
            found = found.decode() if isinstance(found, bytes) else str(found)
            if found in ("none", expected):
                continue
            await store.connections.once(key, "DEL", key)
            removed.append(key)
            log.error("removed the key %r: it is ptgstore's own (a %s) but held a %s, written by something else "
                      "(another tool, or a client of a version that let stream ids name it)", key, expected, found)
    except conn.UNAVAILABLE as exc:
        log.warning("own keys not checked (store unavailable: %s)", conn.reason(exc))
    return removed
