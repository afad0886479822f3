"""Client commands: `ptgstore streams | push | pull | dump | load | simulate`, over `AsyncClient`."""
from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import orjson
from tqdm import tqdm

from .framing import parse_entry_id

if TYPE_CHECKING:
    from .client import AsyncClient

_ENTRY_ID = re.compile(r"^[0-9]+(-[0-9]+)?$")
META_FILE = "meta.json"
ENTRY_SUFFIX = ".bin"


# -- shared plumbing ----------------------------------------------------------------------------

def _progress(**kwargs) -> tqdm:
    # disable=None: bars only on a terminal, so pipes and logs get the summary line alone
    return tqdm(file=sys.stderr, disable=None, dynamic_ncols=True, **kwargs)


def _summary(verb: str, entries: int, size: int, started: float) -> None:
    elapsed = time.monotonic() - started
    rate = tqdm.format_sizeof(size / elapsed, "B/s", 1024) if elapsed > 0 else "-"
    print(f"{verb} {entries} entries, {tqdm.format_sizeof(size, 'B', 1024)} in {elapsed:.2f} s ({rate})",
          file=sys.stderr)


def stream_dirname(stream_id: str) -> str:
    """A file name for a stream id: percent-encoded (`/` is %2F, `:` is %3A), never `.` or `..`."""
    name = quote(stream_id, safe="")
    return "%2E" + name[1:] if name.startswith(".") else name


def entry_filename(entry_id: str) -> str:
    return entry_id + ENTRY_SUFFIX


def _cursor_arg(text: str):
    """`--from`: `$`, `0`, `*`, an entry id, or an ISO 8601 time (without an offset: local time, as a
    person reading a clock means it; `cursor_for_time` takes a naive datetime so)."""
    if text in ("$", "*", "-") or _ENTRY_ID.match(text):
        return text
    try:
        # a trailing Z (UTC) is ISO 8601 too; fromisoformat takes it only from Python 3.11
        return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither $, 0, *, an entry id nor an ISO time") from None


def _password(args) -> str | None:
    """--password (or $PTGSTORE_PASSWORD), else a prompt without echo when a person is at a terminal."""
    if args.password or not args.username:
        return args.password
    if not sys.stdin.isatty():
        raise UsageError("--username needs a password: give --password, set PTGSTORE_PASSWORD, "
                         "or run at a terminal to be asked for it")
    return getpass.getpass(f"password for {args.username}: ")


class UsageError(Exception):
    """A command used in a way that cannot work: the reason goes to stderr, exit status 2."""


_URL_SCHEMES = ("http", "https", "ws", "wss")


def _check_url(url: str | None) -> None:
    """--url (or $PTGSTORE_URL): `host:port` or a URL of one of the schemes the client speaks."""
    scheme = url.partition("://")[0].lower() if url and "://" in url else "http"
    if scheme not in _URL_SCHEMES:
        raise UsageError(f"--url {url}: ptgstore speaks {', '.join(_URL_SCHEMES)} (e.g. http://127.0.0.1:7890, "
                         f"or host:port), not {scheme}")


def _run(handler, prepare=None):
    """Run an async command handler with a client from the flags; errors become a reason and exit 1.

    `prepare(args)` runs first, before any connection: checks of the command line and the terminal,
    and reading standard input (a blocking read inside the event loop would swallow the first Ctrl-C).
    """

    def command(args) -> int:
        # imported only now: websockets reads its settings when imported, and `ptgstore serve` sets them first
        from .client import DEFAULT_URL, AsyncClient, AuthError, PtgError

        try:
            _check_url(args.url)
            if prepare is not None:
                prepare(args)
            password = _password(args)
        except UsageError as exc:
            print(f"ptgstore {args.command}: {exc}", file=sys.stderr)
            return 2
        client = AsyncClient(args.url or DEFAULT_URL, token=args.token, username=args.username,
                             password=password)

        async def main() -> int:
            async with client:
                return await handler(client, args)

        try:
            return asyncio.run(main())
        except AuthError as exc:
            print(f"ptgstore: refused (HTTP {exc.status}): {exc.detail}" if exc.status else f"ptgstore: {exc.detail}",
                  file=sys.stderr)
            if not args.token and not args.username:
                print("ptgstore: give a token with --token or PTGSTORE_TOKEN (`ptgstore token` on the server "
                      "prints one), or log in with --username and --password", file=sys.stderr)
            return 1
        except PtgError as exc:
            from .client import Unreachable

            print(f"ptgstore: {exc}", file=sys.stderr)
            if isinstance(exc, Unreachable):
                print(f"ptgstore: is ptgstore serving at {client.url}? Start it with `ptgstore serve`, or give its "
                      "address with --url or PTGSTORE_URL", file=sys.stderr)
            return 1

    return command


# -- streams ------------------------------------------------------------------------------------

async def streams(client: AsyncClient, args) -> int:
    """List stream ids, or with --info one line per stream with its length, ends and metadata."""
    if not args.info:
        for sid in await client.streams():
            print(sid)
        return 0
    rows = [("stream", "entries", "first entry", "last entry", "last entry time", "meta")]
    for info in await client.streams(info=True):
        rows.append((info["sid"], str(info["length"]), info["first-entry"] or "-", info["last-entry"] or "-",
                     info["last-entry-time"] or "-", orjson.dumps(info["meta"]).decode()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0


# -- push and pull ------------------------------------------------------------------------------

def _prepare_push(args) -> None:
    """Standard input is one entry when piped in or given as `-`; a terminal with no file is a mistake,
    and so is a stream argument naming a file or directory with no FILE (`ptgstore push frame1.jpg`: the
    file was meant as the entry) and standard input holding no bytes (`</dev/null`, a producer that wrote
    nothing): refused before anything is sent, so nothing is stored."""
    if not args.files:
        if os.path.exists(args.stream):
            # checked before standard input is read: `find | while read f; do ptgstore push "$f"; done`
            # would otherwise push the rest of find's output to a stream named after the file
            kind = "directory" if os.path.isdir(args.stream) else "file"
            files = os.path.join(args.stream, "*") if kind == "directory" else args.stream
            raise UsageError(f"{args.stream} is a {kind}: did you mean `ptgstore push STREAM {files}`? "
                             f"(to push standard input to a stream of that name, give '-': "
                             f"ptgstore push {args.stream} -)")
        if sys.stdin.isatty():
            raise UsageError("no FILE given and standard input is a terminal: name files to push, "
                             "pipe data in (cat frame.jpg | ptgstore push STREAM), or give '-' to type it")
        args.files = ["-"]
    directories = [path for path in args.files if path != "-" and os.path.isdir(path)]
    if directories:
        raise UsageError(f"{', '.join(directories)}: a directory, not a file: give the files in it "
                         f"(ptgstore push {args.stream} {os.path.join(directories[0], '*')})")
    missing = [path for path in args.files if path != "-" and not os.path.isfile(path)]
    if missing:
        raise UsageError(f"not a file: {', '.join(missing)}")
    # read here, outside the event loop, so that Ctrl-C interrupts the read at once
    args.stdin_data = sys.stdin.buffer.read() if "-" in args.files else b""
    if "-" in args.files and not args.stdin_data:
        # an entry of zero bytes is pushed from an empty file, never by accident from an empty input
        raise UsageError("nothing to push: standard input is empty (an empty entry is pushed from an "
                         "empty file: ptgstore push STREAM EMPTY_FILE)")


def _read_files(paths: list[str], stdin_data: bytes):
    """(name, bytes) of each file in order; `-` is standard input (read once, before)."""
    for path in paths:
        if path == "-":
            yield "-", stdin_data
        else:
            yield path, Path(path).read_bytes()


async def push(client: AsyncClient, args) -> int:
    """Push each file (or standard input) as one entry, in batches over one WebSocket."""
    started = time.monotonic()
    total_bytes = sum(os.path.getsize(p) for p in args.files if p != "-")
    ids: list[str] = []
    pushed_bytes = batch_bytes = 0
    batch: list = []
    with _progress(total=total_bytes or None, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f"push {args.stream}") as bar:
        async with client.pusher() as pusher:
            for _, data in _read_files(args.files, args.stdin_data):
                batch.append((args.stream, None, data))
                batch_bytes += len(data)
                if batch_bytes >= client.max_batch_bytes:
                    ids += await pusher.push_items(batch)
                    bar.update(batch_bytes)
                    pushed_bytes += batch_bytes
                    batch, batch_bytes = [], 0
            ids += await pusher.push_items(batch)
            bar.update(batch_bytes)
            pushed_bytes += batch_bytes
    if args.ids:
        print("\n".join(ids))
    _summary("pushed", len(ids), pushed_bytes, started)
    print(f"connection: {pusher.summary.reconnects} reconnects, {pusher.summary.resends} batches resent",
          file=sys.stderr)
    return 0


def _prepare_pull(args) -> None:
    from .framing import FramingError, split_stream_ids

    try:
        split_stream_ids(args.streams)  # the server's rules, said before any connection (`cam+`: an empty id)
    except FramingError as exc:
        raise UsageError(f"{args.streams!r}: {exc} (streams are joined by '+': a+b)") from None
    if args.count is not None:
        print("ptgstore pull: --count is deprecated, use --limit (entries in all; --batch is per delivery)",
              file=sys.stderr)
        args.limit = args.limit or args.count
    if args.start is None:
        args.start = "0" if args.history else "$"
    if args.out is None and sys.stdout.isatty():
        raise UsageError("entries are raw bytes and standard output is a terminal: "
                         "give --out DIR, or redirect standard output (> file, | program)")


async def _warn_missing(client: AsyncClient, sids: list[str], history: bool) -> None:
    """Say on stderr which pulled streams do not exist (a typo would otherwise just wait, or print nothing)."""
    from .client import NotFound

    async def exists(sid: str) -> bool:
        try:
            await client.info(sid)
        except NotFound:
            return False
        return True

    for sid, found in zip(sids, await asyncio.gather(*(exists(sid) for sid in sids))):
        if not found:
            print(f"ptgstore: warning: stream {sid!r} does not exist"
                  + ("; nothing to read" if history else " (yet); waiting for its first entry"), file=sys.stderr)


async def pull(client: AsyncClient, args) -> int:
    """Pull entries into one file per entry (`--out`), or as raw bytes to standard output."""
    started = time.monotonic()
    out = Path(args.out) if args.out else None
    entries = size = 0
    await _warn_missing(client, list(dict.fromkeys(args.streams.split("+"))), args.history)
    try:
        with _progress(total=args.limit, unit=" entries", desc=f"pull {args.streams}") as bar:
            async for entry in client.pull(args.streams, args.start, count=args.batch, limit=args.limit,
                                           timeout=args.timeout, stop_when_caught_up=args.history):
                if out is None:
                    sys.stdout.buffer.write(entry.data)
                    sys.stdout.buffer.flush()
                else:
                    directory = out / stream_dirname(entry.stream_id)
                    directory.mkdir(parents=True, exist_ok=True)
                    (directory / entry_filename(entry.entry_id)).write_bytes(entry.data)
                entries += 1
                size += len(entry.data)
                bar.update(1)
    finally:
        # a follow without --count ends with Ctrl-C: still say what was pulled
        _summary("pulled", entries, size, started)
    return 0


# -- dump and load ------------------------------------------------------------------------------

async def dump(client: AsyncClient, args) -> int:
    """Write streams into DIR/<stream>/meta.json and DIR/<stream>/<entry id>.bin."""
    started = time.monotonic()
    root = Path(args.dir)
    sids = args.streams or await client.streams()
    infos = [await client.info(sid) for sid in sids]
    for info in infos:
        directory = root / stream_dirname(info["sid"])
        if directory.exists() and any(directory.iterdir()):
            print(f"ptgstore: {directory} is not empty; dump into a new directory", file=sys.stderr)
            return 1
    entries = size = 0
    with _progress(total=sum(info["length"] for info in infos), unit=" entries", desc="dump") as bar:
        for info in infos:
            directory = root / stream_dirname(info["sid"])
            directory.mkdir(parents=True, exist_ok=True)
            (directory / META_FILE).write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
            written, written_bytes = await _dump_stream(client, info, directory, args.page, bar)
            entries += written
            size += written_bytes
    _summary(f"dumped {len(infos)} streams,", entries, size, started)
    return 0


async def _dump_stream(client: AsyncClient, info: dict, directory: Path, page: int, bar: tqdm
                       ) -> tuple[int, int]:
    """Page through a stream up to its last entry at dump time (entries added later are left out);
    answers the entries and bytes written."""
    last = info["last-entry"]
    cursor = "0"
    entries = size = 0
    while last is not None and parse_entry_id(cursor) < parse_entry_id(last):
        batch = [e for e in await client.read(info["sid"], cursor, count=page)
                 if parse_entry_id(e.entry_id) <= parse_entry_id(last)]
        if not batch:
            break
        for entry in batch:
            (directory / entry_filename(entry.entry_id)).write_bytes(entry.data)
            entries += 1
            size += len(entry.data)
        bar.update(len(batch))
        cursor = batch[-1].entry_id
    return entries, size


def _dumped_streams(root: Path, only: list[str]) -> list[tuple[dict, list[Path]]]:
    """(info, entry files in id order) of each stream dumped under `root`."""
    found = []
    for meta_path in sorted(root.glob(f"*/{META_FILE}")):
        info = orjson.loads(meta_path.read_bytes())
        if only and info["sid"] not in only:
            continue
        files = sorted(meta_path.parent.glob("*" + ENTRY_SUFFIX),
                       key=lambda p: parse_entry_id(p.name[:-len(ENTRY_SUFFIX)]))
        found.append((info, files))
    return found


async def load(client: AsyncClient, args) -> int:
    """Recreate dumped streams: metadata, then every entry under its original id (or new ids)."""
    started = time.monotonic()
    dumped = _dumped_streams(Path(args.dir), args.streams)
    if not dumped:
        print(f"ptgstore: no dumped streams (*/{META_FILE}) in {args.dir}", file=sys.stderr)
        return 1
    if not (args.replace or args.new_ids):
        # original ids only go after a stream's newest entry: refuse before anything is written
        from .client import NotFound

        for info, _ in dumped:
            try:
                existing = await client.info(info["sid"])
            except NotFound:
                continue
            if existing["length"]:
                print(f"ptgstore: stream {info['sid']!r} already exists ({existing['length']} entries); nothing "
                      "was loaded: add --replace to delete and recreate it, or --new-ids to append the entries "
                      "under new ids", file=sys.stderr)
                return 1
    entries = size = 0
    with _progress(total=sum(len(files) for _, files in dumped), unit=" entries", desc="load") as bar:
        async with client.pusher() as pusher:
            for info, files in dumped:
                sid = info["sid"]
                if args.replace:
                    await client.delete(sid)
                if info.get("meta") or not files:
                    await client.update(sid, info.get("meta") or {}, override=True)
                for chunk in _chunks(files, client.max_batch_bytes):
                    items = [(sid, None if args.new_ids else p.name[:-len(ENTRY_SUFFIX)], p.read_bytes())
                             for p in chunk]
                    await pusher.push_items(items)
                    entries += len(items)
                    size += sum(len(item[2]) for item in items)
                    bar.update(len(items))
    _summary(f"loaded {len(dumped)} streams,", entries, size, started)
    return 0


def _chunks(files: list[Path], max_bytes: int):
    """Runs of files whose sizes add up to about `max_bytes`, so memory stays bounded."""
    chunk, size = [], 0
    for path in files:
        chunk.append(path)
        size += path.stat().st_size
        if size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


# -- the parser -----------------------------------------------------------------------------------

def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value

    return parse


def add_client_commands(commands) -> None:
    """Register the client commands on the `ptgstore` sub-command parser."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=os.environ.get("PTGSTORE_URL"),
                            help="server URL (default $PTGSTORE_URL, else http://127.0.0.1:7890)")
    connection.add_argument("--token", default=os.environ.get("PTGSTORE_TOKEN"),
                            help="bearer token (default $PTGSTORE_TOKEN)")
    connection.add_argument("--username", help="log in with this name instead of a token")
    connection.add_argument("--password", default=os.environ.get("PTGSTORE_PASSWORD"), help="the password for --username (default $PTGSTORE_PASSWORD, "
                            "else asked for at a terminal)")

    def command(name, handler, help_text, prepare=None):
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[connection])
        sub.set_defaults(handler=_run(handler, prepare))
        return sub

    listing = command("streams", streams, "list streams")
    listing.add_argument("--info", action="store_true", help="with length, first/last entry and metadata")

    pushing = command("push", push, "push files (or standard input) as entries, one per file", _prepare_push)
    pushing.add_argument("stream")
    pushing.add_argument("files", nargs="*", metavar="FILE",
                         help="files to push; '-' (or none, when data is piped in): standard input")
    pushing.add_argument("--ids", action="store_true", help="print the new entry ids")

    pulling = command("pull", pull, "pull entries live or from history", _prepare_pull)
    pulling.add_argument("streams", metavar="STREAM[+STREAM]")
    pulling.add_argument("--from", dest="start", type=_cursor_arg,
                         help="$ (new entries only; the default), 0 (from the start; the default with --history), "
                              "* (the newest --batch entries, at most --limit), an entry id or an ISO time "
                              "(2026-11-23T10:00:00+01:00, or Z for UTC; without an offset: local time)")
    pulling.add_argument("--history", action="store_true",
                         help="read what is stored (up to each stream's last entry now), then stop: never wait")
    pulling.add_argument("--limit", type=_positive(int), metavar="N", help="stop after N entries in all")
    pulling.add_argument("--count", type=_positive(int), help=argparse.SUPPRESS)  # the old name of --limit
    pulling.add_argument("--timeout", type=_positive(float), metavar="SECONDS",
                         help="stop after this many seconds without data")
    pulling.add_argument("--out", metavar="DIR", help="write DIR/<stream>/<entry id>.bin instead of bytes to standard output")
    pulling.add_argument("--batch", type=_positive(int), default=100, metavar="N",
                         help="fetch at most N entries per stream in one delivery (default %(default)s); "
                              "does not limit the total")

    dumping = command("dump", dump, "write streams to a directory: <stream>/meta.json and <entry id>.bin")
    dumping.add_argument("dir")
    dumping.add_argument("streams", nargs="*", metavar="STREAM", help="streams to dump (default: all)")
    dumping.add_argument("--page", type=_positive(int), default=200, help="entries per request")

    loading = command("load", load, "recreate dumped streams from a directory, with their entry ids")
    loading.add_argument("dir")
    loading.add_argument("streams", nargs="*", metavar="STREAM", help="streams to load (default: all)")
    loading.add_argument("--replace", action="store_true", help="delete each stream before loading it")
    loading.add_argument("--new-ids", action="store_true", help="let the server give the entries new ids")

    from .simulate import simulate
    sim = command("simulate", simulate, "a headset: synthetic camera, depth and IMU streams for a while")
    sim.add_argument("--duration", type=_positive(float), default=10.0, help="seconds (default %(default)s)")
    sim.add_argument("--device", default="sim", help="stream ids are DEVICE:main, :depthlt, :imu")
    sim.add_argument("--camera-hz", type=float, default=30.0, help="640x360 JPEG frames per second (about 45 KiB)")
    sim.add_argument("--depth-hz", type=float, default=5.0, help="320x288 uint16 depth frames per second")
    sim.add_argument("--imu-hz", type=_positive(float), default=200.0, help="IMU samples per second")
    sim.add_argument("--imu-batch", type=_positive(int), default=10, help="IMU samples per entry")
    sim.add_argument("--seed", type=int, default=0, help="random seed of the synthetic data")
    from .record_commands import add_recording_commands

    add_recording_commands(command)
