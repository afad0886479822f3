"""The recordings on disk, in one place: one directory per recording under the recordings
directory, its segment files, its kept info object (`info.json`) and its hidden mark; the names
a recording may take; the listing; a recording's info (the active one's from Redis). The routes
(`routes/recordings.py`, `routes/recording_replay.py`) and the recorder (`shard.py`) go through here.

A recording's segments are written by several processes (one per shard of its streams): shard
`k`'s segments are `part-<k>-<n>.mcap` (`part-03-000001.mcap`, ...); recordings of earlier
versions and uploads hold other `.mcap` names. Every `.mcap` file of the directory belongs to the
recording: readers merge them in time order.

Every `Catalogue` method that reads or writes the recordings directory is refused (409 with the
reason) on a process whose directory is not the deployment's (`directory.py`): it would show or
write a part of the recordings only. Its refusals are Starlette `HTTPException`s (400, 404, 409),
which the REST routes answer and the replay socket closes with, as they are.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from starlette.exceptions import HTTPException

from ..framing import parse_entry_id
from ..private import FILE_MODE, open_private, private_dir
from ..store import StoreError, entry_time_iso
from .mcapfiles import SEGMENT_SUFFIX, summarize
from .mcapread import Limits, off_loop

if TYPE_CHECKING:
    from .directory import RecordingsDirectory
    from .state import RecordingStore

log = logging.getLogger("ptgstore.recordings")

INFO_FILE = "info.json"
HIDDEN_FILE = ".hidden"
UPLOADS_DIR = ".uploads"  # under the recordings directory: uploads being received (same file system)
MAX_ID_BYTES = 200
# words that are routes of their own under /recordings/, never a recording's name
RESERVED_IDS = frozenset({"current", "start", "stop", "static", "upload", "replay", "cache"})


def validate_name(name: str, what: str = "recording id") -> str:
    """`name` when it can name a recording (a directory) or one of its files, else a 400 saying why."""
    if not name:
        raise HTTPException(400, f"empty {what}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise HTTPException(400, f"{what} longer than {MAX_ID_BYTES} bytes")
    if "/" in name or "\\" in name:
        raise HTTPException(400, f"{what} {name!r} contains a '/' or '\\'")
    if name.startswith("."):
        raise HTTPException(400, f"{what} {name!r} starts with '.'")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise HTTPException(400, f"{what} contains a control character")
    if what == "recording id" and name in RESERVED_IDS:
        raise HTTPException(400, f"{name!r} is reserved and cannot name a recording")
    return name


def segment_name(shard: int, number: int) -> str:
    return f"part-{shard:02d}-{number:06d}{SEGMENT_SUFFIX}"


def temporary_name(shard: int, number: int, token: str) -> str:
    return f"part-{shard:02d}-{number:06d}.{token}.tmp"


def parse_segment_name(name: str) -> tuple[int, int, str | None] | None:
    """(shard, number, token) of `part-KK-NNNNNN.mcap` (token None) or of its temporary file; None
    for any other name."""
    if not name.startswith("part-"):
        return None
    stem, dot, rest = name[len("part-"):].partition(".")
    shard, dash, number = stem.partition("-")
    if not (dash and dot and shard.isascii() and shard.isdigit() and number.isascii() and number.isdigit()):
        return None
    if rest == SEGMENT_SUFFIX[1:]:
        return int(shard), int(number), None
    token, dot, suffix = rest.partition(".")
    return (int(shard), int(number), token) if dot and suffix == "tmp" and token else None


def segment_files(rec_dir: Path) -> list[Path]:
    """The finished segment files (and any uploaded MCAP files) of a recording, by name."""
    if not rec_dir.is_dir():
        return []
    return sorted(p for p in rec_dir.iterdir() if p.suffix == SEGMENT_SUFFIX and p.is_file())


def _seconds_between(first: str | None, last: str | None) -> float | None:
    if not first or not last:
        return None
    return (int(last.split("-")[0]) - int(first.split("-")[0])) / 1000


def stream_info(stats: dict, gaps: list[dict], sid: str) -> dict:
    """One stream's part of an info object (a stream that got nothing: 0 entries)."""
    counts = {"count": stats.get("count", 0), "bytes": stats.get("bytes", 0),
              "first-entry": stats.get("first-entry"), "last-entry": stats.get("last-entry")}
    return {**counts, "first-entry-time": entry_time_iso(counts["first-entry"]),
            "last-entry-time": entry_time_iso(counts["last-entry"]),
            "duration_secs": _seconds_between(counts["first-entry"], counts["last-entry"]),
            "gaps": sum(1 for g in gaps if g["sid"] == sid),
            "lost": sum(g.get("lost", 0) for g in gaps if g["sid"] == sid)}


def build_info(rec_id: str, rec_dir: Path, stats: dict[str, dict], gaps: list[dict], **extra) -> dict:
    """The info object of a recording from its per-stream stats, gaps and files."""
    streams = {sid: stream_info(s, gaps, sid) for sid, s in sorted(stats.items())}
    firsts = [s["first-entry"] for s in streams.values() if s["first-entry"]]
    lasts = [s["last-entry"] for s in streams.values() if s["last-entry"]]
    first = min(firsts, key=parse_entry_id) if firsts else None
    last = max(lasts, key=parse_entry_id) if lasts else None
    files = segment_files(rec_dir)
    size = sum(f.stat().st_size for f in files)
    seconds = _seconds_between(first, last)
    return {
        "name": rec_id, "streams": streams,
        "files": [f.name for f in files], "size": size, "size_mb": size / 1024**2,
        "first-entry": first, "last-entry": last,
        "first-entry-time": entry_time_iso(first), "last-entry-time": entry_time_iso(last),
        "duration": str(timedelta(seconds=seconds)) if seconds is not None else None,
        "duration_secs": seconds, "gaps": len(gaps), "lost": sum(g.get("lost", 0) for g in gaps),
        "gap_list": gaps, "writers": [],
        "hidden": (rec_dir / HIDDEN_FILE).exists(), **extra,
    }


def write_info(rec_dir: Path, info: dict) -> None:
    """Keep the info object beside the segments (written whole, then renamed: two processes may
    write the same info at once)."""
    tmp = rec_dir / f"{INFO_FILE}.{uuid.uuid4().hex}.tmp"
    with open_private(tmp) as file:
        file.write(orjson.dumps({k: v for k, v in info.items() if k not in ("hidden", "active")},
                                option=orjson.OPT_INDENT_2))
    os.replace(tmp, rec_dir / INFO_FILE)


def info_from_files(rec_id: str, rec_dir: Path, limits: Limits | None = None) -> dict:
    """Info of a recording without a kept info object (an upload): read from its MCAP files."""
    return build_info(rec_id, rec_dir, summarize(segment_files(rec_dir), limits), [])


def finished_info(rec_id: str, rec_dir: Path, error: str | None, limits: Limits | None = None) -> dict:
    """The info object of a recording no process is writing: the kept one, with its files as they
    are now (made from the files, and kept, when there is none)."""
    try:
        kept = orjson.loads((rec_dir / INFO_FILE).read_bytes())
    except (OSError, ValueError):
        kept = None
    if kept is None:
        info = info_from_files(rec_id, rec_dir, limits)
        try:
            write_info(rec_dir, info)
        except OSError:
            pass
    else:
        files = segment_files(rec_dir)
        size = sum(f.stat().st_size for f in files)
        info = {"writers": [], **kept, "name": rec_id, "files": [f.name for f in files], "size": size,
                "size_mb": size / 1024**2}
    info["hidden"] = (rec_dir / HIDDEN_FILE).exists()
    info["active"] = False
    if error and not info.get("error"):
        info["error"] = error
    return info


def recording_names(root: Path, hidden: bool) -> list[str]:
    """The recordings under `root` (hidden ones too with `hidden`), sorted."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (hidden or not (p / HIDDEN_FILE).exists()))


def streams_of(info: dict) -> list[str] | None:
    """The streams a recording holds (None: an active recording of every stream, future ones too)."""
    if info.get("active") and info.get("streams_requested") is None:
        return None
    return list(info.get("streams") or {}) + list(info.get("streams_requested") or [])


def new_name(root: Path) -> str:
    """A free name from the local time, `YYYY.MM.DD-HH.MM.SS` (`-2`, `-3`, ... after it when taken)."""
    base = datetime.now().strftime("%Y.%m.%d-%H.%M.%S")
    name, n = base, 1
    while (root / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def put_file(tmp: Path, path: Path, overwrite: bool) -> bool:
    """Give a received file its name; False when one exists and may not be replaced (another upload
    of the same name may have finished meanwhile)."""
    if overwrite:
        os.replace(tmp, path)
        return True
    try:
        os.link(tmp, path)  # fails when `path` exists, unlike a rename
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        if path.exists():
            return False
        os.replace(tmp, path)
    return True


class Catalogue:
    """The deployment's recordings: their directories under `root`, the active one's progress in
    Redis (`states`), refused while `directory` is not proven the deployment's."""

    def __init__(self, root: Path, states: RecordingStore, directory: RecordingsDirectory,
                 limits: Limits | None = None):
        self.root = Path(root)
        self.states = states
        self.directory = directory
        self.limits = limits or Limits()  # what reading its files back refuses or skips

    def checked_root(self) -> Path:
        """The recordings directory; 409 with the reason when it is not the deployment's."""
        if self.directory.problem is not None:
            raise HTTPException(409, f"recordings are refused on this process: {self.directory.problem}")
        return self.root

    def path(self, rec_id: str) -> Path:
        """The directory of recording `rec_id` (a valid name; it may not exist)."""
        return self.checked_root() / validate_name(rec_id)

    @property
    def uploads(self) -> Path:
        """Where uploads are received (checked)."""
        return self.checked_root() / UPLOADS_DIR

    async def names(self, hidden: bool) -> list[str]:
        return await asyncio.to_thread(recording_names, self.checked_root(), hidden)

    async def info(self, rec_id: str) -> dict | None:
        """The info object of a recording (active or finished), or None when there is none."""
        rec_dir = self.checked_root() / rec_id
        state = await self.states.state()
        if state is not None and state["id"] == rec_id:
            _, stats, gaps, _ = await self.states.progress()
            writers = await self.states.writers()
            return await asyncio.to_thread(build_info, rec_id, rec_dir, stats, gaps, active=True,
                                           status=state.get("status"), started=state.get("started"),
                                           streams_requested=state["streams"], writers=writers)
        if not rec_dir.is_dir():
            return None
        return await off_loop(finished_info, rec_id, rec_dir, await self.states.error_of(rec_id), self.limits)

    async def new_id(self) -> str:
        return await asyncio.to_thread(new_name, self.checked_root())

    async def start(self, rec_id: str, streams: list[str] | None, shards: int) -> None:
        """Make `rec_id` (a valid name, see `path`) the active recording: 409 when one is active or the
        name is taken, 400 for a key that is not a stream."""
        rec_dir = self.path(rec_id)
        if rec_dir.exists():
            raise HTTPException(409, f"recording {rec_id!r} already exists")
        try:
            await self.states.start(rec_id, streams, shards)
        except StoreError as exc:
            raise HTTPException(400 if "not a stream" in str(exc) else 409, str(exc)) from None
        try:
            await asyncio.to_thread(private_dir, rec_dir)
        except OSError as exc:
            log.error("recording %s: cannot create %s: %s", rec_id, rec_dir, exc)
        log.info("recording %s started (%s)", rec_id, "+".join(streams) if streams else "every stream")

    async def stop(self, wait: float) -> str | None:
        """Stop the active recording and wait up to `wait` seconds for its files; its id (None: none was)."""
        rec_id = await self.states.stop()
        if rec_id is None:
            return None
        deadline = time.monotonic() + wait
        while await self.states.active_id() == rec_id and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        log.info("recording %s stopped", rec_id)
        return rec_id

    async def refuse_active(self, rec_id: str) -> None:
        if await self.states.active_id() == rec_id:
            raise HTTPException(409, f"recording {rec_id!r} is active: stop it first")

    async def existing(self, rec_id: str) -> Path:
        """The directory of a finished recording: 409 while it is active, 404 when there is none."""
        rec_dir = self.path(rec_id)
        await self.refuse_active(rec_id)
        if not rec_dir.is_dir():
            raise HTTPException(404, f"no recording {rec_id!r}")
        return rec_dir

    async def rename(self, rec_id: str, new_id: str) -> list[bool]:
        """`[the new name is there, the old one gone]`."""
        new_dir = self.path(new_id)
        old_dir = await self.existing(rec_id)
        if new_dir.exists():
            raise HTTPException(409, f"recording {new_id!r} already exists")
        await asyncio.to_thread(os.rename, old_dir, new_dir)
        await self.states.forget_error(rec_id, new_id)
        return [new_dir.is_dir(), not old_dir.exists()]

    async def delete(self, rec_id: str) -> list[bool]:
        rec_dir = await self.existing(rec_id)
        await asyncio.to_thread(shutil.rmtree, rec_dir)
        await self.states.forget_error(rec_id)
        return [not rec_dir.exists(), True]

    async def set_hidden(self, rec_id: str, hidden: bool) -> None:
        rec_dir = self.path(rec_id)
        if not rec_dir.is_dir():
            raise HTTPException(404, f"no recording {rec_id!r}")
        marker = rec_dir / HIDDEN_FILE
        if hidden:
            await asyncio.to_thread(marker.touch, FILE_MODE)
        else:
            await asyncio.to_thread(marker.unlink, True)

    def file(self, rec_id: str, name: str) -> Path:
        """A finished file of a recording (404 when there is none)."""
        path = self.path(rec_id) / name
        if name.endswith(".tmp") or not path.is_file():
            raise HTTPException(404, f"no file {name!r} in recording {rec_id!r}")
        return path

    def segment_files(self, rec_id: str) -> list[Path]:
        return segment_files(self.path(rec_id))

    async def can_add(self, rec_id: str, name: str, overwrite: bool) -> Path:
        """Where file `name` of an upload to `rec_id` goes, checked before its body is received."""
        rec_dir = self.path(rec_id)
        await self.refuse_active(rec_id)
        if name.endswith(".tmp") or name == INFO_FILE:
            raise HTTPException(400, f"{name!r} cannot be uploaded")
        if (rec_dir / name).exists() and not overwrite:
            raise HTTPException(409, f"{name!r} exists in recording {rec_id!r} (overwrite=true replaces it)")
        return rec_dir / name

    async def add(self, rec_id: str, name: str, tmp: Path, overwrite: bool) -> int:
        """Give the received (and checked) file `tmp` its place in recording `rec_id` (made when new);
        its size. The recording's info is counted again from its files."""
        rec_dir = self.path(rec_id)
        path = rec_dir / name
        await self.refuse_active(rec_id)  # (started while the body arrived)
        await asyncio.to_thread(private_dir, rec_dir)
        if not await asyncio.to_thread(put_file, tmp, path, overwrite):
            raise HTTPException(409, f"{name!r} exists in recording {rec_id!r} (overwrite=true replaces it)")
        await asyncio.to_thread((rec_dir / INFO_FILE).unlink, True)
        return path.stat().st_size
