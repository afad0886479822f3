"""Idempotent pushes: a push socket that names its producer numbers its messages, and a batch whose
number the server has already stored is answered with the ids it was stored under, storing nothing.

The batch and the producer's record change in one Lua script, in the batch's slot: the record is a
sorted set per producer, account and group (`keys.producer`), scored by sequence number, each
member `<seq> <ids joined by ,>`. It keeps the newest `batches` numbers and expires `window`
seconds after the producer's last batch there. docs/protocol.md ("Idempotent pushes") is the contract.
"""
from __future__ import annotations

import asyncio
import re
import time
from typing import Sequence

from . import connections as conn
from .connections import ResponseError
from .framing import FramingError
from .store import _ADD_SCRIPT, Store, StoreError, StoreUnavailable  # (wrapped: a batch is stored alike)

PRODUCER_ID = re.compile(r"[A-Za-z0-9._~:@-]{1,128}")
MAX_SEQ = 2**53 - 1  # Lua numbers are doubles: every sequence number below this is exact


class SequenceRefused(Exception):
    """A producer's batch number the server cannot place: older than what it remembers of the
    producer, or a resend that does not match the batch stored under that number."""


# The producer's part of both scripts below. KEYS: the record last. ARGV: the message's sequence
# number, how many numbers the record keeps and how long it lives (ms) first. A number stored before
# is answered {1, ids} (storing nothing); one older than the record remembers is an error `PTGSEQ
# <oldest> <newest>`; else the message is stored (`ids`) and recorded, answered {0, ids}.
_CHECK = """
local seq, keep, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local record = KEYS[#KEYS]
local newest = redis.call('ZREVRANGE', record, 0, 0, 'WITHSCORES')
if newest[1] and seq <= tonumber(newest[2]) then
  local seen = newest
  if seq < tonumber(newest[2]) then seen = redis.call('ZRANGEBYSCORE', record, seq, seq) end
  if seen[1] then
    local ids = {}
    local listed = string.sub(seen[1], string.find(seen[1], ' ', 1, true) + 1)
    for id in string.gmatch(listed, '[^,]+') do ids[#ids + 1] = id end
    return {1, ids}
  end
  local oldest = redis.call('ZRANGE', record, 0, 0, 'WITHSCORES')
  return redis.error_reply(string.format('PTGSEQ %.0f %s %s', seq, oldest[2], newest[2]))
end
"""
_RECORD = """
redis.call('ZADD', record, seq, string.format('%.0f ', seq) .. table.concat(ids, ','))
redis.call('ZREMRANGEBYRANK', record, 0, -(keep + 1))
redis.call('PEXPIRE', record, window)
return {0, ids}
"""

# Any batch. KEYS and ARGV: those of the add script (`store._ADD_SCRIPT`, the entries' bytes last:
# a large one is sent without a copy) between the producer's. The add script runs as a function of
# its own, on copies of KEYS and ARGV without the producer's items.
_IDEMPOTENT_ADD = _CHECK + """
local function add(KEYS, ARGV)
""" + _ADD_SCRIPT + """
end
local keys, argv = {}, {}
for i = 1, #KEYS - 1 do keys[i] = KEYS[i] end
for i = 4, #ARGV do argv[i - 3] = ARGV[i] end
local ids = add(keys, argv)
if ids.err then return ids end
""" + _RECORD

# One entry with a Redis-made id (the common message: a frame), as `Store.add` stores it: XADD
# with the stream's max_len. KEYS: the stream, its metadata hash, the record. ARGV: the producer's
# three, the default max_len, the stream id, the bytes.
_IDEMPOTENT_ADD_ONE = _CHECK + """
local max = redis.pcall('HGET', KEYS[2], 'max_len')
max = (type(max) == 'string' and tonumber(max)) or tonumber(ARGV[4])
local id = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', max, '*', 'd', ARGV[6])
if type(id) == 'table' and id.err then
  if string.find(id.err, 'WRONGTYPE') then return redis.error_reply('PTGTYPE ' .. ARGV[5] .. ' is not a stream') end
  return id
end
local ids = {id}
""" + _RECORD


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
        self._add = store.script(_IDEMPOTENT_ADD)
        self._add_one = store.script(_IDEMPOTENT_ADD_ONE)

    def session(self, producer_id: str, account: str, first_seq: str) -> "ProducerSession":
        """One push socket's producer: its messages are numbered from `first_seq` on."""
        return ProducerSession(self, parse_producer_id(producer_id), account, parse_seq(first_seq))

    async def add(self, producer_id: str, account: str, seq: int, entries: Sequence[tuple[str, str, bytes]]
                  ) -> tuple[list[str], bool]:
        """Store a non-empty batch as number `seq` of the producer, unless it was stored before:
        `(ids, True)` then, the ids it was stored under."""
        store = self.store
        first = entries[0][0]
        args: list = [seq, self.batches, self.window_ms, store.default_max_len]
        script = self._add
        if len(entries) == 1 and entries[0][1] == "*":
            keys = [store.key(first), store.keys.meta(first)]
            args += (first, entries[0][2])
            script = self._add_one
        else:
            index: dict[str, int] = {}
            triples: list = []
            for sid, spec, data in entries:
                triples += (index.setdefault(sid, len(index) + 1), spec, data)
            store.check_batch(index)
            keys = [store.key(sid) for sid in index] + [store.keys.meta(sid) for sid in index]
            args += (len(index), *index, *triples)
        keys.append(store.keys.producer(producer_id, account, first))
        started = time.perf_counter()
        try:
            repeated, ids = await script(keys=keys, args=args)
        except conn.UNAVAILABLE as exc:
            raise StoreUnavailable(f"store unavailable: {conn.reason(exc)}".strip()) from exc
        except ResponseError as exc:
            raise _refusal(exc, producer_id, seq) from None
        finally:
            if store.on_roundtrip is not None:  # reported once the reply is on its way, as the store does
                asyncio.get_running_loop().call_soon(store.on_roundtrip, "add", time.perf_counter() - started)
        ids = [i.decode() for i in ids]
        if repeated and len(ids) != len(entries):
            raise SequenceRefused(f"producer {producer_id} batch {seq} was stored with {len(ids)} entries, "
                                  f"not {len(entries)}")
        return ids, bool(repeated)


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

    __slots__ = ("producers", "producer_id", "account", "seq", "repeated")

    def __init__(self, producers: Producers, producer_id: str, account: str, first_seq: int):
        self.producers = producers
        self.producer_id = producer_id
        self.account = account
        self.seq = first_seq
        self.repeated = False  # the last batch was a resend, answered without storing

    async def add(self, entries: Sequence[tuple[str, str, bytes]]) -> list[str]:
        """Store the socket's next message; its ids (those of before, for a resend)."""
        seq = self.seq
        if seq > MAX_SEQ:
            raise FramingError("seq passed 2^53-1")
        self.seq = seq + 1
        if not entries:  # an empty batch stores nothing, however often it comes
            self.repeated = False
            return []
        ids, self.repeated = await self.producers.add(self.producer_id, self.account, seq, entries)
        return ids
