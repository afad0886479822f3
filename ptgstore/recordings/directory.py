"""One recordings directory per deployment, checked: every process on one Redis must write its
recordings into the same directory (a shared volume), or each would hold a part of them.

A process proves it: the directory holds a marker file (`.ptgstore-recordings`, a random id) and
Redis names the deployment's directory by the same id (`RecordingStore.directory`). The first
process on a Redis writes the marker and names its directory; every later one must find the named
id in its own directory's marker. A process whose directory holds no marker, or another id (a
directory of another Redis), is refused recordings (`problem` says why) and writes nothing. A
directory without a marker is adopted only at start-up, when no process that proved the named
directory is running (the storage was replaced while everything was stopped). On an ephemeral
disk (PTGSTORE_EPHEMERAL_DISK=true) the default directory under the data directory is refused:
recordings need PTGSTORE_RECORDINGS_DIR on persistent storage.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from pathlib import Path

import orjson

from ..private import private_dir
from .state import RecordingStore

log = logging.getLogger("ptgstore.recorder")

MARKER_FILE = ".ptgstore-recordings"
SETTLE_SECONDS = 2.0  # a problem is logged once it outlasts this since start-up (another process may be mid-claim)
ADOPT_WITHIN = 10.0  # seconds after start-up a process may adopt a directory without a marker
ADOPT_AFTER_MS = 15_000  # a directory named this recently may be a process starting now: not adopted


def read_marker(root: Path) -> str | None:
    """The id in the directory's marker file, None when it has none."""
    try:
        return str(orjson.loads((root / MARKER_FILE).read_bytes())["id"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"(unreadable: {exc})"


def write_marker(root: Path, marker_id: str) -> bool:
    """Write the marker unless the directory has one (exclusive: of two processes writing at once,
    one wins); whether this one did."""
    private_dir(root)
    body = orjson.dumps({"id": marker_id, "host": socket.gethostname(), "path": str(root),
                         "created": time.time()})
    tmp = root / f"{MARKER_FILE}.{marker_id}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, root / MARKER_FILE)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def remove_marker(root: Path, marker_id: str) -> None:
    if read_marker(root) == marker_id:
        (root / MARKER_FILE).unlink(missing_ok=True)


class RecordingsDirectory:
    """Whether this process's recordings directory is the deployment's: `problem` is None when it
    is, else the reason recordings are refused here."""

    def __init__(self, states: RecordingStore, root: Path, ephemeral_refusal: str | None = None):
        self.states = states
        self.root = Path(root)
        self.refusal = ephemeral_refusal
        self.problem: str | None = ephemeral_refusal or "the recordings directory is not checked yet"
        self.id: str | None = None
        self.started = time.monotonic()
        self.logged: str | None = None  # the problem last logged
        self.announced: str | None = None  # the marker last logged as proven
        self.named_path: str | None = None  # where the deployment's directory is (for the log only)

    @property
    def ok(self) -> bool:
        return self.problem is None

    async def prove(self) -> str | None:
        """Check the directory; the problem, None when it is the deployment's. A problem is logged
        once it outlasts the first SETTLE_SECONDS (another process starting at the same moment may
        be between its two steps), and again when it changes."""
        if self.refusal:
            return self.refusal
        age = time.monotonic() - self.started
        problem = await self._check(startup=age < ADOPT_WITHIN)
        if problem is None and self.logged is not None or problem is None and self.id != self.announced:
            log.info("recordings directory %s is the deployment's (marker %s)", self.root, self.id)
            self.logged, self.announced = None, self.id
        elif problem is not None and problem != self.logged and age >= SETTLE_SECONDS:
            log.error("recordings refused on this process: %s (this process's directory: %s; the deployment's: %s)",
                      problem, self.root, self.named_path or "none named")
            self.logged = problem
        self.problem = problem
        return problem

    async def _check(self, startup: bool) -> str | None:
        """The problem, for clients too: it names settings, hosts and marker ids, never a path (the
        log line adds the paths)."""
        marker = await asyncio.to_thread(read_marker, self.root)
        named = await self.states.directory()
        self.named_path = f"{named.get('path')} on {named.get('host')}" if named else None
        if marker is not None and named is not None and marker == named.get("id"):
            self.id = marker
            return None
        if marker is None and named is None:
            return await self._claim(None)
        if marker is None and named is not None:
            if startup and await self._unused(named):
                log.warning("recordings directory of this deployment changes from %s on %s to %s (no process "
                            "using the former is running)", named.get("path"), named.get("host"), self.root)
                return await self._claim(named.get("id"))
            return (f"this process's PTGSTORE_RECORDINGS_DIR is not the recordings directory the other processes on "
                    f"this Redis use (theirs, first set up on host {named.get('host')}, holds the marker file "
                    f"{MARKER_FILE}; this one has none): give every process the same directory (a shared volume)")
        if named is None:
            return (f"this process's PTGSTORE_RECORDINGS_DIR belongs to a deployment on another Redis (its marker "
                    f"file {MARKER_FILE} holds {marker}; this Redis names no directory): two deployments must not "
                    f"share one directory; if that deployment is gone for good, delete the marker file")
        return (f"this process's PTGSTORE_RECORDINGS_DIR is not the recordings directory of this deployment: its "
                f"marker {marker} is not the one this Redis names ({named.get('id')}, set up on host "
                f"{named.get('host')}): it belongs to another deployment, or to one on another Redis")

    async def _unused(self, named: dict[str, str]) -> bool:
        """No process proved the named directory lately and none is present."""
        recent = time.time() * 1000 - float(named.get("since") or 0) < ADOPT_AFTER_MS
        return not recent and await self.states.present(0) == 0

    async def _claim(self, expected: str | None) -> str | None:
        marker_id = uuid.uuid4().hex
        try:
            written = await asyncio.to_thread(write_marker, self.root, marker_id)
        except OSError as exc:
            return f"this process's PTGSTORE_RECORDINGS_DIR cannot be written: {exc.strerror}"
        if not written:
            return "another process is setting up the recordings directory"  # looked at again
        record = {"id": marker_id, "path": str(self.root), "host": socket.gethostname(),
                  "since": str(int(time.time() * 1000))}
        if not await self.states.claim_directory(expected, record):
            await asyncio.to_thread(remove_marker, self.root, marker_id)
            return "another process named the recordings directory first"  # looked at again
        self.id = marker_id
        return None
