"""The client's push socket that carries on: an idempotent producer (docs/protocol.md, "Idempotent
pushes") that reconnects with backoff when its socket drops or the server goes away (1001), resends
what was not acknowledged, and hands back each entry's id once, in order.

    async with client.pusher() as pusher:
        ids = await pusher.push("cam", [frame])
    print(pusher.summary)   # batches, entries, reconnects, resends
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple, Sequence

from websockets.exceptions import ConnectionClosed

from ..backoff import Backoff
from ..framing import encode_header, pack_entries
from .errors import TRANSIENT_CLOSES, PtgError, ServerError, StreamClosed, Unreachable, closed_error

if TYPE_CHECKING:
    from .aio import AsyncClient

log = logging.getLogger("ptgstore.client")


def as_entries(entries: bytes | Iterable[bytes]) -> list[bytes]:
    """One entry (bytes) or many as a list of bytes."""
    if isinstance(entries, (bytes, bytearray, memoryview)):
        return [bytes(entries)]
    return [bytes(e) if isinstance(e, (bytearray, memoryview)) else e for e in entries]


def batches(items: Sequence, max_bytes: int, max_entries: int) -> Iterator[list]:
    """Consecutive runs of `(sid, ts, data)` items within both bounds (an oversize item goes alone)."""
    batch: list = []
    size = 0
    for item in items:
        if batch and (size + len(item[2]) > max_bytes or len(batch) >= max_entries):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += len(item[2])
    if batch:
        yield batch


class PushSummary(NamedTuple):
    """What a pusher did: batches and entries acknowledged, times it reconnected, batches it resent."""

    batches: int = 0
    entries: int = 0
    reconnects: int = 0
    resends: int = 0

    def __str__(self) -> str:
        return (f"{self.entries} entries in {self.batches} batches, "
                f"{self.reconnects} reconnects, {self.resends} batches resent")


class Pusher:
    """Batches (header + blob) over a push WebSocket that names its producer; waits for each ack.

    An interruption (a dropped socket, a close with 1001/1006/1011/1012/1013, no ack within the
    client's `timeout`, a server that does not answer) is retried at once, then with backoff, for
    up to the client's `reconnect_timeout` counted from its start: the batch is resent on a new
    socket under the same number, so the server stores it once. Refusals (1007, 1008, 1009, a token
    refused) are raised at once."""

    def __init__(self, client: AsyncClient, producer_id: str | None = None, first_seq: int = 1):
        self._client = client
        self.producer_id = producer_id or uuid.uuid4().hex
        self._seq = first_seq  # the number of the next batch
        self._ws: Any = None
        self._connected_once = False
        self._lock = asyncio.Lock()  # one batch in flight: concurrent pushes take turns
        self._summary = PushSummary()

    @property
    def summary(self) -> PushSummary:
        return self._summary

    @property
    def next_seq(self) -> int:
        """The number the next batch will have (a producer id kept across runs starts there next time)."""
        return self._seq

    async def push(self, stream_id: str, entries: bytes | Iterable[bytes], timestamps: Sequence | None = None
                   ) -> list[str]:
        """Store entries in `stream_id`; returns their ids in order.

        `timestamps` (one per entry): epoch seconds, an entry id string to store under, or None for now.
        """
        data = as_entries(entries)
        stamps = list(timestamps) if timestamps is not None else [None] * len(data)
        if len(stamps) != len(data):
            raise ValueError(f"{len(stamps)} timestamps for {len(data)} entries")
        return await self.push_items([(stream_id, ts, d) for ts, d in zip(stamps, data)])

    async def push_items(self, items: Sequence[tuple[str, object, bytes]]) -> list[str]:
        """Store `(stream id, timestamp or None, bytes)` items, several streams at once; returns their ids."""
        client = self._client
        ids: list[str] = []
        async with self._lock:
            for batch in batches(items, client.max_batch_bytes, client.max_batch_entries):
                header, blob = pack_entries(batch)
                seq, self._seq = self._seq, self._seq + 1  # used up even if it fails: it may be stored
                ids += await self._deliver(seq, encode_header(header).decode(), blob, len(batch))
        return ids

    async def _deliver(self, seq: int, header: str, blob: bytes, count: int) -> list[str]:
        """Send batch `seq` until it is acknowledged; its ids."""
        client = self._client
        backoff = Backoff()
        lost_at: float | None = None
        sent = False
        error: PtgError
        while True:
            try:
                if self._ws is not None and self._ws.close_code in TRANSIENT_CLOSES:
                    await self._drop()  # it ended while idle (cut, or the server went away): nothing to resend
                if self._ws is None:
                    await self._open(seq)
                if sent:
                    self._count(resends=1)
                sent = True
                await self._ws.send(header)
                await self._ws.send(blob)
                ack = await asyncio.wait_for(self._ws.recv(), client.timeout)
            except ConnectionClosed as exc:
                closed = closed_error(exc)
                if closed.code not in TRANSIENT_CLOSES:
                    await self._drop()
                    raise closed from None
                error = closed
            except asyncio.TimeoutError:
                # a late ack would pass for the next batch's: this socket is done with
                error = ServerError(f"no acknowledgement of {count} entries within {client.timeout} s")
            except Unreachable as exc:
                if not self._connected_once and _nobody_there(exc.__cause__):
                    raise  # a wrong URL or a server not started: say so now (a cut handshake is retried)
                error = exc
            except ServerError as exc:  # the handshake answered 5xx: the server is in trouble, for now
                error = exc
            else:
                ids = ack.split(",")
                if len(ids) != count:
                    raise ServerError(f"the server acknowledged {len(ids)} ids for {count} entries")
                self._count(batches=1, entries=count)
                return ids
            await self._drop()
            now = time.monotonic()
            if lost_at is None:  # a cut connection is usually back at once: the first retry does not wait
                log.info("push connection of producer %s lost (%s): reconnecting", self.producer_id, error)
                lost_at = now
                continue
            if now - lost_at >= client.reconnect_timeout:
                raise _gave_up(error, f"gave up after {client.reconnect_timeout:g} s; batch {seq} of producer "
                                      f"{self.producer_id}, {count} entries, may be stored") from None
            await asyncio.sleep(min(backoff.failed(), max(0.0, lost_at + client.reconnect_timeout - now)))

    async def _open(self, seq: int) -> None:
        params = {"batch": "true", "ack": "true", "offsets": "start", "producer": self.producer_id, "seq": seq}
        self._ws = await self._client._connect("/data/*/push", params)
        if self._connected_once:
            self._count(reconnects=1)
        self._connected_once = True

    async def _drop(self) -> None:
        """Let go of a socket that failed: aborted, not closed (a close handshake on a silent network
        would wait for its timeout)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            self._client._sockets.discard(ws)
            ws.transport.abort()

    def _count(self, **more: int) -> None:
        self._summary = self._summary._replace(**{k: getattr(self._summary, k) + v for k, v in more.items()})

    async def aclose(self) -> None:
        async with self._lock:
            ws, self._ws = self._ws, None
            if ws is not None:
                await self._client._disconnect(ws)


def _nobody_there(cause: BaseException | None) -> bool:
    """Whether a failed connection was refused or its host unknown (not cut while opening)."""
    if isinstance(cause, (ConnectionRefusedError, socket.gaierror)):
        return True
    # asyncio's summary when every address of the host refused ("Multiple exceptions: ...")
    return type(cause) is OSError and "Connect call failed" in str(cause)


def _gave_up(error: PtgError, why: str) -> PtgError:
    """`error` saying that the pusher stopped trying, and what may be stored."""
    if isinstance(error, StreamClosed):
        return StreamClosed(error.code, f"{error.reason} ({why})")
    return type(error)(error.detail, error.status, why)
