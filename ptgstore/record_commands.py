"""Recording commands: `ptgstore record start|stop|ls|info|download|rm|mv|hide|unhide` and
`ptgstore replay NAME|FILE`, over `AsyncClient`."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from typing import TYPE_CHECKING

import orjson
from tqdm import tqdm

from .commands import _progress

if TYPE_CHECKING:
    from .client import AsyncClient


def _speed_arg(text: str):
    """`--speed`: a factor of the recorded pace, or `max` for as fast as possible."""
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"speed must be a number or 'max', not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"speed must be positive, not {text}")
    return value


def human_duration(seconds: float | None) -> str:
    """`4.2 s`, `3 min 07 s`, `2 h 05 min` (`-` for none)."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _listing(item: dict) -> str:
    flags = " (active)" if item.get("active") else " (hidden)" if item.get("hidden") else ""
    entries = sum(s["count"] for s in item["streams"].values())
    return (f"{item['name']}{flags}: {len(item['streams'])} streams, {entries} entries, "
            f"{tqdm.format_sizeof(item['size'], 'B', 1024)}, {human_duration(item.get('duration_secs'))}, "
            f"{item['gaps']} gaps{', ' + item['error'] if item.get('error') else ''}")


async def _download(client: AsyncClient, name: str, out: str, merge: bool) -> list[str]:
    """Into OUT/NAME/ (segments and info.json), or with `merge` one file OUT/NAME.mcap."""
    info = await client.recording(name)
    with contextlib.ExitStack() as stack:
        into = stack.enter_context(tempfile.TemporaryDirectory(dir=out, prefix=".download-")) if merge else out
        with _progress(total=info["size"], unit="B", unit_scale=True, unit_divisor=1024, desc=name) as bar:
            paths = await client.download_recording(name, into, progress=bar.update)
        if not merge:
            return paths
        from .recordings.mcapmerge import merge_files

        target = os.path.join(out, f"{name}.mcap")
        count = merge_files([p for p in paths if p.endswith(".mcap")], target)
    print(f"merged {count} entries of {len(info['files'])} files into {target}", file=sys.stderr)
    return [target]


async def record(client: AsyncClient, args) -> int:
    """`ptgstore record start [NAME] [--streams a+b] | stop | ls [--info] | info NAME | download NAME | rm | mv`."""
    action = args.action
    names = args.names
    wanted = {"start": (0, 1), "stop": (0, 0), "ls": (0, 0), "info": (1, 1), "download": (1, 1),
              "rm": (1, 1), "mv": (2, 2), "hide": (1, 1), "unhide": (1, 1)}[action]
    if not wanted[0] <= len(names) <= wanted[1]:
        print(f"ptgstore record {action}: expected {wanted[0]}-{wanted[1]} names, got {len(names)}", file=sys.stderr)
        return 2
    if action == "start":
        print(await client.start_recording(names[0] if names else None, args.streams))
    elif action == "stop":
        current = await client.current_recording()
        if not await client.stop_recording():
            print("no recording is active", file=sys.stderr)
            return 1
        print(current)
    elif action == "ls":
        for item in await client.recordings(info=args.info, hidden=args.all):
            print(_listing(item) if args.info else item)
    elif action == "info":
        print(orjson.dumps(await client.recording(names[0]), option=orjson.OPT_INDENT_2).decode())
    elif action == "download":
        for path in await _download(client, names[0], args.out, args.merge):
            print(path)
    elif action == "rm":
        await client.delete_recording(names[0])
    elif action == "mv":
        await client.rename_recording(names[0], names[1])
    else:
        await client.hide_recording(names[0], hidden=action == "hide")
    return 0


def _local_recording_problem(source: str) -> str | None:
    """Why SOURCE, meant as a local recording (it exists, or it is a path or a .mcap name: a recording on
    the server has neither a '/' nor that suffix), cannot be replayed; None when it can, or names one on
    the server."""
    if os.path.isdir(source):
        if not any(name.endswith(".mcap") for name in os.listdir(source)):
            return f"no .mcap files in {source} (a downloaded recording holds its segments)"
        return None
    if os.path.exists(source):
        return None if source.endswith(".mcap") else (f"{source} is not a recording: give a .mcap file, a "
                                                      "directory of them, or the NAME of one on the server")
    if source.endswith(".mcap") or "/" in source or os.sep in source:
        return f"no such file or directory: {source}"
    return None


async def replay(client: AsyncClient, args) -> int:
    """Replay a recording on the server (NAME), or a local .mcap file or downloaded recording directory."""
    source = args.source
    local = _local_recording_problem(source)
    if local is not None:
        print(f"ptgstore replay: {local}", file=sys.stderr)
        return 2
    if os.path.exists(source) and (source.endswith(".mcap") or os.path.isdir(source)):
        if args.keep_ids:
            print("ptgstore replay: --keep-ids replays a recording on the server, not a local file", file=sys.stderr)
            return 2
        bar = _progress(unit=" entries", desc=source)
        with bar:
            sent = await client.replay_file(source, args.streams, args.prefix, args.speed,
                                            progress=lambda sid, n: bar.update(n))
        print(f"replayed {sum(sent.values())} entries of {len(sent)} streams", file=sys.stderr)
        return 0
    bars: dict[str, tqdm] = {}
    sent = {}

    def show(report: dict) -> None:
        for sid, count in report.get("updates", {}).items():
            sent[sid] = sent.get(sid, 0) + count
        for sid, duration in report.get("durations", {}).items():
            if sid not in bars:
                bars[sid] = _progress(total=round(duration, 1), desc=sid, unit="s")
            bars[sid].n = round(report["current"].get(sid, 0), 1)
            bars[sid].refresh()

    try:
        await client.replay_recording(source, args.streams, args.prefix, args.speed, keep_ids=args.keep_ids,
                                      progress=show)
    finally:
        for bar in bars.values():
            bar.close()
    print(f"replayed {sum(sent.values())} entries of {len(sent)} streams", file=sys.stderr)
    return 0


def add_recording_commands(command) -> None:
    """`ptgstore record ...` and `ptgstore replay ...` (given add_client_commands' `command`)."""
    recording = command("record", record, "start, stop, list, inspect, download, rename and delete recordings")
    recording.add_argument("action", choices=["start", "stop", "ls", "info", "download", "rm", "mv", "hide",
                                              "unhide"])
    recording.add_argument("names", nargs="*", metavar="NAME", help="the recording (mv: OLD NEW)")
    recording.add_argument("--streams", metavar="A+B", help="start: record only these streams (default: all)")
    recording.add_argument("--info", action="store_true", help="ls: with size, duration, entries and gaps")
    recording.add_argument("--all", action="store_true", help="ls: hidden recordings too")
    recording.add_argument("--out", default=".", help="download: into OUT/NAME/ (default: here)")
    recording.add_argument("--merge", action="store_true",
                           help="download: one file OUT/NAME.mcap, every segment merged (for tools that open one file)")

    replaying = command("replay", replay, "replay a recording (NAME on the server, or a local .mcap file or "
                                          "directory) into live streams")
    replaying.add_argument("source", metavar="NAME|FILE.mcap")
    replaying.add_argument("--streams", metavar="A+B", help="only these streams (default: all)")
    replaying.add_argument("--prefix", default="", help="replay stream S into PREFIX+S (e.g. replay:)")
    replaying.add_argument("--speed", type=_speed_arg, default=1.0,
                           help="times the recorded pace (default 1), or 'max' for as fast as possible")
    replaying.add_argument("--keep-ids", action="store_true",
                           help="a recording on the server: keep the recorded entry ids (into empty streams)")
