"""The recordings on disk: one directory per recording under the recordings directory, its
segment files, its kept info object (`info.json`) and its hidden mark. No Redis, no HTTP.

A recording's segments are written by several processes (one per shard of its streams): shard
`k`'s segments are `part-<k>-<n>.mcap` (`part-03-000001.mcap`, ...); recordings of earlier
versions and uploads hold other `.mcap` names. Every `.mcap` file of the directory belongs to the
recording: readers merge them in time order.
"""
from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

import orjson

from .framing import parse_entry_id
from .mcapfiles import SEGMENT_SUFFIX, summarize
from .mcapread import Limits
from .private import open_private
from .store import entry_time_iso

INFO_FILE = "info.json"
HIDDEN_FILE = ".hidden"


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
