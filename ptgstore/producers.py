"""Idempotent pushes: a push socket that names its producer numbers its messages, and a batch whose
number the server has already stored is answered with the ids it was stored under, storing nothing.

The batch and the producer's record change in one Lua script (`lua/idempotent_add.lua`, and
`lua/idempotent_add_one.lua` for one entry), in the batch's slot; a large frame (OUTSIDE_LUA) is
stored by its own XADD followed by `lua/idempotent_add_large.lua` in one MULTI, which keeps its bytes
out of Lua (making a new 512 KiB argument a Lua string costs Redis 0.7 ms). The record is a sorted set per
producer, account and group (`keys.producer`), scored by sequence number, each member `<seq> <ids
joined by ,>`. It keeps the newest `batches` numbers and expires `window` seconds after the
producer's last batch there. docs/protocol.md ("Idempotent pushes") is the contract.
"""
from __future__ import annotations

import asyncio
import re
import time
from typing import Sequence

from . import connections as conn
from .connections import ResponseError
from .framing import FramingError
from .luascripts import lua
from .store import FIELD, Store, StoreError, StoreUnavailable

PRODUCER_ID = re.compile(r"[A-Za-z0-9._~:@-]{1,128}")
OUTSIDE_LUA = 16 * 1024  # bytes from which a frame is stored by an XADD of its own (idempotent_add_large.lua)
MAX_SEQ = 2**53 - 1  # Lua numbers are doubles: every sequence number below this is exact


class SequenceRefused(Exception):
    """A producer's batch number the server cannot place: older than what it remembers of the
    producer, or a resend that does not match the batch stored under that number."""


def parse_producer_id(text: str) -> str:
    if not PRODUCER_ID.fullmatch(text):
        raise FramingError("producer must be 1 to 128 letters, digits or ._~:@- characters")
    return text


def parse_seq(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_SEQ:
        raise FramingError(f"seq must be a whole number from 0 to 2^53-1, not {text[:40]!r}")
    return int(text)


class Producers:
    """Idempotent batches in one store: `window` seconds a quiet producer is remembered, the ids of
    its newest `batches` batches (per group) kept for resends."""

    def __init__(self, store: Store, window: int, batches: int):
        self.store = store
        self.window_ms = window * 1000
        self.batches = batches
        self._add = store.script(lua("idempotent_add.lua"))  # (add.lua within: a batch is stored alike)
        self._add_one = store.script(lua("idempotent_add_one.lua"))
        self._large = lua("idempotent_add_large.lua")

    def session(self, producer_id: str, account: str, first_seq: str) -> "ProducerSession":
        """One push socket's producer: its messages are numbered from `first_seq` on."""
        return ProducerSession(self, parse_producer_id(producer_id), account, parse_seq(first_seq))

    async def add(self, producer_id: str, account: str, seq: int, entries: Sequence[tuple[str, str, bytes]],
                  record: str | None = None) -> tuple[list[str], bool]:
        """Store a non-empty batch as number `seq` of the producer, unless it was stored before:
        `(ids, True)` then, the ids it was stored under. `record`: the producer's record for the
        batch's first stream (`keys.producer`), when the caller knows it."""
        store = self.store
        first = entries[0][0]
        if record is None:
            record = store.keys.producer(producer_id, account, first)
        if len(entries) == 1 and entries[0][1] == "*":  # a frame: the stream's max_len known here, as Store.add does
            data = entries[0][2]
            if len(data) >= OUTSIDE_LUA:
                return self._answer(producer_id, seq, entries,
                                    await self._run(producer_id, seq, lambda: self._add_large(seq, first, record, data)))
            script = self._add_one
            keys = [store.key(first), record]
            args: list = [seq, self.batches, self.window_ms, await store.max_len(first), first, data]
        else:
            script = self._add
            index: dict[str, int] = {}
            triples: list = []
            for sid, spec, data in entries:
                triples += (index.setdefault(sid, len(index) + 1), spec, data)
            store.check_batch(index)
            keys = [store.key(sid) for sid in index] + [store.keys.meta(sid) for sid in index] + [record]
            args = [seq, self.batches, self.window_ms, store.default_max_len, len(index), *index, *triples]
        return self._answer(producer_id, seq, entries,
                            await self._run(producer_id, seq, lambda: script(keys=keys, args=args)))

    async def _add_large(self, seq: int, sid: str, record: str, data: bytes) -> list:
        """A large frame: its own XADD (its bytes kept out of Lua) then `idempotent_add_large.lua`,
        which records it or takes the XADD back, in one MULTI. The script's reply."""
        store = self.store
        key = store.key(sid)
        xadd = ("XADD", key, "MAXLEN", "~", await store.max_len(sid), "*", FIELD, data)
        # by its text, not its hash: a NOSCRIPT (a restarted Redis) would leave the XADD standing alone
        settle = ("EVAL", self._large, 2, key, record, seq, self.batches, self.window_ms, sid)
        replies = await store.connections.transaction(key, xadd, settle)
        if isinstance(replies[1], Exception):
            raise replies[1]
        return replies[1]

    @staticmethod
    def _answer(producer_id: str, seq: int, entries: Sequence, reply: list) -> tuple[list[str], bool]:
        """A script's reply `[repeated, ids]` as `(ids, repeated)`; a resend that is not the batch stored
        under its number is refused."""
        repeated, ids = reply
        ids = [i.decode() for i in ids]
        if repeated and len(ids) != len(entries):
            raise SequenceRefused(f"producer {producer_id} batch {seq} was stored with {len(ids)} entries, "
                                  f"not {len(entries)}")
        return ids, bool(repeated)

    async def _run(self, producer_id: str, seq: int, call):
        """`call()`'s reply, its failures told as the store tells them."""
        store = self.store
        started = time.perf_counter()
        try:
            return await call()
        except conn.UNAVAILABLE as exc:
            raise StoreUnavailable(f"store unavailable: {conn.reason(exc)}".strip()) from exc
        except ResponseError as exc:
            raise _refusal(exc, producer_id, seq) from None
        finally:
            if store.on_roundtrip is not None:  # reported once the reply is on its way, as the store does
                asyncio.get_running_loop().call_soon(store.on_roundtrip, "add", time.perf_counter() - started)


def _refusal(exc: ResponseError, producer_id: str, seq: int) -> Exception:
    message = str(exc)
    if message.startswith(("PTGSTALE", "PTGTYPE")):
        return StoreError(message.split(" ", 1)[1])
    if message.startswith("PTGSEQ"):
        _, _, oldest, newest = message.split(" ")
        where = "older than" if seq < int(oldest) else "not among"  # (below the newest: never stored here)
        return SequenceRefused(f"producer {producer_id[:24]} seq {seq} is {where} those remembered "
                               f"({oldest}..{newest}); it may be stored")
    if conn.is_unavailable(exc):
        return StoreUnavailable(f"store unavailable: {conn.reason(exc)}")
    return exc


class ProducerSession:
    """The producer of one push socket: numbers its messages and stores each batch once."""

    __slots__ = ("producers", "producer_id", "account", "seq", "repeated", "_record")

    def __init__(self, producers: Producers, producer_id: str, account: str, first_seq: int):
        self.producers = producers
        self.producer_id = producer_id
        self.account = account
        self.seq = first_seq
        self.repeated = False  # the last batch was a resend, answered without storing
        self._record = ("", "")  # (stream id, the producer's record for its group): most sockets push to one

    async def add(self, entries: Sequence[tuple[str, str, bytes]]) -> list[str]:
        """Store the socket's next message; its ids (those of before, for a resend)."""
        seq = self.seq
        if seq > MAX_SEQ:
            raise FramingError("seq passed 2^53-1")
        self.seq = seq + 1
        if not entries:  # an empty batch stores nothing, however often it comes
            self.repeated = False
            return []
        first = entries[0][0]
        if self._record[0] != first:
            self._record = (first, self.producers.store.keys.producer(self.producer_id, self.account, first))
        ids, self.repeated = await self.producers.add(self.producer_id, self.account, seq, entries, self._record[1])
        return ids
