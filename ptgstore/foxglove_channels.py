"""The streams as Foxglove channels: one catalogue per process, shared by every `/foxglove` socket.

While at least one Foxglove socket is open, the catalogue lists the streams every
`PTGSTORE_FOXGLOVE_SCAN_MS` (one SCAN through the store, whatever the number of sockets),
classifies the new ones (`foxglove_schemas.classify`: one summary round trip, plus one read of
the newest entry of the few that are neither images nor named by a layout) and hears deletes at
once on the store's deletions channel. Each change bumps `version` and wakes the sockets, which
advertise and unadvertise the difference. A stream's format is fixed when it is first seen with
an entry (or a layout): a stream seen empty is listed as raw bytes and looked at again at each scan.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from .foxglove_schemas import RAW, Format, classify
from .framing import NEWEST
from .layouts import LAYOUT_KEY
from .store import Store, StoreError, StoreUnavailable

log = logging.getLogger("ptgstore.foxglove")

CLASSIFY_BATCH = 256  # new streams classified per scan at most (the rest at the next scans)
SNIFF_BYTES = 256 * 1024  # newest entries larger than this are not read to guess their format
FIRST_SCAN_TIMEOUT = 10.0


@dataclass(frozen=True)
class Channel:
    """A stream advertised as a Foxglove channel; the id is new whenever the format changes."""

    id: int
    sid: str
    format: Format
    settled: bool = True  # False: seen without entries, looked at again at each scan


class Catalogue:
    """Every stream of the store as a channel, kept up to date while sockets listen."""

    def __init__(self, store: Store, scan_seconds: float):
        self.store = store
        self.scan_seconds = scan_seconds
        self.channels: dict[str, Channel] = {}
        self.version = 0
        self.listeners: set[asyncio.Event] = set()
        self.scanned = asyncio.Event()
        self.problem: str | None = None  # why the last scan failed, or None
        self._next_id = 1
        self._tasks: list[asyncio.Task] = []
        self._deleted_meanwhile: set[str] = set()  # deleted while a scan was under way

    @contextlib.asynccontextmanager
    async def listening(self):
        """An event set at each change of the channels, while in the block (the first scan done)."""
        event = asyncio.Event()
        self.listeners.add(event)
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._run(), name="ptgstore-foxglove-scan"),
                           loop.create_task(self.store.watch_deletes(self._deleted), name="ptgstore-foxglove-deletes")]
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.scanned.wait(), FIRST_SCAN_TIMEOUT)
            yield event
        finally:
            self.listeners.discard(event)
            if not self.listeners:
                self.stop()

    def stop(self) -> None:
        """Stop scanning (the last socket left, or the server stops): the next socket starts afresh."""
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        self.channels = {}
        self.scanned = asyncio.Event()

    def _changed(self) -> None:
        self.version += 1
        for event in self.listeners:
            event.set()

    def _deleted(self, sid: str | None) -> None:
        if sid is None:
            return
        self._deleted_meanwhile.add(sid)
        if self.channels.pop(sid, None) is not None:
            self._changed()

    async def _run(self) -> None:
        while True:
            try:
                await self.scan()
                self.problem = None
            except (StoreUnavailable, StoreError) as exc:
                if self.problem is None:
                    log.warning("foxglove: cannot list the streams (%s); trying again", exc)
                self.problem = str(exc)
            except Exception:  # a bug: said once per scan with its traceback; the sockets keep what they have
                log.exception("foxglove: listing the streams failed")
                self.problem = "internal server error"
            self.scanned.set()
            await asyncio.sleep(self.scan_seconds)

    async def scan(self) -> None:
        """List the streams once: drop the gone, classify (up to CLASSIFY_BATCH of) the new."""
        self._deleted_meanwhile = set()
        sids = await self.store.stream_ids()
        present = set(sids) - self._deleted_meanwhile  # (a listing begun before a delete may still hold it)
        changed = False
        for sid in [sid for sid in self.channels if sid not in present]:
            del self.channels[sid]
            changed = True
        todo = [sid for sid in sids if sid in present and (sid not in self.channels or not self.channels[sid].settled)]
        for channel in await self._classify(todo[:CLASSIFY_BATCH]):
            if channel.sid in self._deleted_meanwhile:
                continue
            before = self.channels.get(channel.sid)
            if before is not None and before.format == channel.format:
                if channel.settled and not before.settled:
                    self.channels[channel.sid] = Channel(before.id, before.sid, before.format)
                continue
            self.channels[channel.sid] = Channel(self._next_id, channel.sid, channel.format, channel.settled)
            self._next_id += 1
            changed = True
        if changed:
            self._changed()

    async def _classify(self, sids: list[str]) -> list[Channel]:
        """The formats of streams (ids to be assigned): their summaries, and the newest entry of
        those neither images nor named by a layout, all in two round trips."""
        if not sids:
            return []
        summaries = await self.store.summaries(sids)
        sniff = [s["sid"] for s in summaries
                 if s["last-entry"] and not s["last-entry-type"] and LAYOUT_KEY not in s["meta"]
                 and s["last-entry-size"] <= SNIFF_BYTES]
        newest = {sid: data for sid, _, data in await self.store.read([(sid, NEWEST, 1) for sid in sniff])} \
            if sniff else {}
        out = []
        for summary in summaries:
            sid, meta = summary["sid"], summary["meta"]
            if not isinstance(meta, dict):
                meta = {}
            fmt = classify(sid, meta, summary["last-entry-type"], newest.get(sid))
            settled = bool(summary["last-entry"]) or fmt is not RAW
            out.append(Channel(0, sid, fmt, settled))
        return out
