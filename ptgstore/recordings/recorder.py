"""The recorder of one API process: its share of the active recording's streams, written to MCAP
segment files in the deployment's recordings directory.

A recording's streams are shared out in shards (`PTGSTORE_RECORDING_SHARDS`, fixed when it
starts): a stream's shard follows its group (its id up to the group separator; ids without one
each on their own), so a headset's streams go together. Each shard is written by one process at
a time, the holder of the shard's lease in Redis (a key with a short TTL its holder renews).
Every process able to record (its recordings directory proven, `directory.py`) says so in
Redis, and holds its fair share of the shards: the shard count divided by the processes present,
rounded up. It takes free shards up to its share and gives back what is above it (finishing the
segment in progress first). When a process dies its leases expire and the others take its shards
over within seconds, from the committed cursors (`shard.py`): nothing is lost.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import zlib
from pathlib import Path

from ..connections import RedisError
from ..keys import Keys
from ..store import Store, StoreUnavailable
from .catalogue import Catalogue
from .directory import RecordingsDirectory
from .mcapread import Limits
from .state import RecordingStore

log = logging.getLogger("ptgstore.recorder")

LEASE_TTL_MS = 3000
RENEW_EVERY = 1.0
ACQUIRE_EVERY = 0.5  # seconds between looks for an active recording (or shards to take or give back)
PRESENCE_TTL_MS = 5000  # a process that stops saying it can record counts as gone after this
CHECK_DIRECTORY_EVERY = 5.0  # seconds between checks that the recordings directory is still the deployment's


class LeaseLost(Exception):
    """Another process holds the shard's lease now."""


def shard_of(sid: str, shards: int, keys: Keys) -> int:
    """The shard of a stream: by its group, or by its id when it has none."""
    return zlib.crc32((keys.group(sid) or sid).encode("utf-8", "surrogateescape")) % shards


class Recorder:
    """The recorder of one API process: proves its directory, competes for shards and writes them."""

    def __init__(self, store: Store, root: Path, segment_seconds: float, segment_bytes: int, shards: int = 4,
                 ephemeral_refusal: str | None = None, read_count: int = 256, limits: Limits | None = None):
        self.states = RecordingStore(store)
        self.keys = store.keys
        self.root = Path(root)
        self.segment_seconds = segment_seconds
        self.segment_bytes = segment_bytes
        self.shards = shards
        self.read_count = read_count
        self.directory = RecordingsDirectory(self.states, self.root, ephemeral_refusal)
        self.catalogue = Catalogue(self.root, self.states, self.directory, limits)  # (what the routes use)
        self.writer = {"host": socket.gethostname(), "pid": os.getpid()}
        self.closing = asyncio.Event()
        self.held: dict[int, ShardTask] = {}
        self.present = 0
        self._task: asyncio.Task | None = None
        self._complained = False
        self._proven_at: float | None = None
        self._scan_lock = asyncio.Lock()
        self._scanned: tuple[float, list[str]] | None = None

    async def recordable_streams(self, max_age: float) -> list[str]:
        """The streams a recording of every stream follows, looked up at most every `max_age`
        seconds for all the shards this process writes (a look is a SCAN of the whole key space)."""
        async with self._scan_lock:
            now = asyncio.get_running_loop().time()
            if self._scanned is None or now - self._scanned[0] >= max_age:
                self._scanned = (now, await self.states.recordable_streams())
            return self._scanned[1]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="ptgstore-recorder")

    @property
    def problem(self) -> str | None:
        """Why recordings are refused on this process (None: they are not)."""
        return self.directory.problem

    def status(self) -> dict:
        """For /status: whether this process records, why not, what it writes (no file paths)."""
        return {"ok": self.directory.ok, "problem": self.directory.problem, "shards_held": sorted(self.held),
                "recorders_present": self.present}

    async def prove_directory(self) -> None:
        """At start-up: check that the recordings directory is the deployment's (see `problem`)."""
        try:
            await self.directory.prove()
            self._proven_at = asyncio.get_running_loop().time()
            if self.directory.ok:  # present from the start: others count this process at once
                self.present = await self.states.present(PRESENCE_TTL_MS)
        except (StoreUnavailable, OSError, ConnectionError, RedisError) as exc:
            log.warning("recordings directory not checked yet: %s", exc)

    async def close(self, timeout: float = 10.0) -> None:
        """Finish the segments in progress (so that a restart rewrites little) and give up the leases."""
        self.closing.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            except Exception:
                log.exception("recorder failed while closing")

    async def _supervise(self) -> None:
        try:
            while not self.closing.is_set():
                try:
                    loop_time = asyncio.get_running_loop().time()
                    every = CHECK_DIRECTORY_EVERY if self.directory.ok else 1.0
                    if self._proven_at is None or loop_time - self._proven_at >= every:
                        await self.directory.prove()
                        self._proven_at = loop_time
                    self._reap()
                    if self.directory.ok:
                        self.present = await self.states.present(PRESENCE_TTL_MS)
                        state = await self.states.state()
                        if state is not None and state.get("status") in ("recording", "stopping"):
                            await self._balance(state["shards"])
                    else:
                        self._give_back(len(self.held))
                    self._complained = False
                except (StoreUnavailable, OSError, ConnectionError, RedisError) as exc:
                    if not self._complained:
                        log.warning("recorder: %s", exc)
                        self._complained = True
                except Exception:
                    log.exception("recorder failed; retrying")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), ACQUIRE_EVERY)
        finally:
            tasks = [held.task for held in self.held.values()]
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                if self.directory.ok:
                    await self.states.present(0)

    def _reap(self) -> None:
        """Forget shard tasks that ended (the recording ended, the lease was lost, or they failed)."""
        for shard, held in list(self.held.items()):
            if held.task.done():
                del self.held[shard]
                if not held.task.cancelled() and held.task.exception() is not None:
                    exc = held.task.exception()
                    if isinstance(exc, LeaseLost):
                        log.warning("recorder: lease of shard %d lost to another process", shard)
                    elif isinstance(exc, (StoreUnavailable, OSError, ConnectionError, RedisError)):
                        log.warning("recorder: shard %d: %s", shard, exc)
                    else:
                        log.error("recorder failed on shard %d; retrying", shard, exc_info=exc)

    async def _balance(self, shards: int) -> None:
        """Take free shards up to this process's fair share; give back one above it."""
        share = math.ceil(shards / max(1, self.present))
        free = [k for k in range(shards) if k not in self.held]
        random.shuffle(free)  # processes looking at once try different shards first
        for shard in free:
            if len(self.held) >= share:
                break
            if await self.states.acquire(shard, LEASE_TTL_MS):
                log.info("recorder: this process writes shard %d of %d", shard, shards)
                self.held[shard] = ShardTask(self, shard)
        self._give_back(len(self.held) - share)

    def _give_back(self, count: int) -> None:
        for shard in sorted(self.held, reverse=True)[:max(0, count)]:
            self.held[shard].release.set()


class ShardTask:
    """Holding one shard's lease: renewing it, and writing the shard while a recording is active."""

    def __init__(self, recorder: Recorder, shard: int):
        self.recorder = recorder
        self.shard = shard
        self.release = asyncio.Event()  # give the shard back (after the segment in progress)
        self.task = asyncio.get_running_loop().create_task(self._hold(), name=f"ptgstore-recorder-shard-{shard}")

    @property
    def leaving(self) -> bool:
        return self.recorder.closing.is_set() or self.release.is_set()

    async def _hold(self) -> None:
        states = self.recorder.states
        renewer = asyncio.ensure_future(self._renew())
        worker = asyncio.ensure_future(self._work())
        try:
            done, _ = await asyncio.wait({renewer, worker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (renewer, worker):
                task.cancel()
            await asyncio.gather(renewer, worker, return_exceptions=True)
            with contextlib.suppress(Exception):
                await states.release(self.shard)
        for task in done:
            task.result()

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            if not await self.recorder.states.renew(self.shard, LEASE_TTL_MS):
                raise LeaseLost()

    async def _work(self) -> None:
        """Write the shard of the active recording (one after another), then give the lease back."""
        from .shard import ShardWriting  # (here: shard.py imports this module's names)

        while not self.leaving:
            state = await self.recorder.states.state()
            if state is None or state.get("status") not in ("recording", "stopping") or self.shard >= state["shards"]:
                return
            await ShardWriting(self, state).run()
