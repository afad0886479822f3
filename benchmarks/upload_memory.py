"""What uploading and replaying recordings costs the server's memory: its peak RSS against its RSS
before, for valid files up to the upload limit.

    python -m benchmarks.upload_memory [--mib 1024] [--large 16] [--images 8]

Starts a private redis-server and, for each file, a `ptgstore serve` of its own (default limits:
PTGSTORE_MAX_MESSAGE 16 MiB, PTGSTORE_MAX_UPLOAD 4 GiB), warms every path up with a small file,
then resets the server's peak RSS (`/proc/<pid>/clear_refs`, 5), uploads it, asks for its info,
replays it at full speed into `replay:` streams (trimmed to 1000 entries, as by default), and
reads the peak (`VmHWM`). The files (written to a temporary directory, incompressible bytes):
- `many`: MIB MiB of 64 KiB entries on 4 streams, zstd chunks of 4 MiB (the recorder's);
- `large`: LARGE raw entries of just under 16 MiB each;
- `images`: IMAGES JPEG entries of just under 16 MiB each, written by the recorder's own writer
  (foxglove.CompressedImage JSON, base64: the largest chunks the recorder writes).
Prints one row per file; exits 1 when a peak is 64 MiB or more above the RSS before it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
from mcap.writer import CompressionType, Writer
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from benchmarks.harness import PrivateRedis, Server
from ptgstore.recordings.mcapfiles import SegmentWriter

MiB = 1024 * 1024
BUDGET = 64 * MiB
ENTRY_LIMIT = 16 * MiB - 4096  # just under the default PTGSTORE_MAX_MESSAGE


def status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


def write_raw(path: Path, count: int, size: int, streams: int) -> int:
    """A file of `count` incompressible entries of `size` bytes, written as the mcap package does."""
    with open(path, "wb") as out:
        writer = Writer(out, chunk_size=4 * MiB, compression=CompressionType.ZSTD)
        writer.start()
        channels = [writer.register_channel(f"s{i}", "application/octet-stream", 0) for i in range(streams)]
        for n in range(count):
            t = (1_700_000_000_000 + n) * 1_000_000
            writer.add_message(channels[n % streams], log_time=t, publish_time=t, data=os.urandom(size), sequence=n)
        writer.finish()
    return count


def write_images(path: Path, count: int, size: int) -> int:
    writer = SegmentWriter(path)
    for n in range(count):
        writer.write([("cam", f"{1_700_000_000_000 + n}-0", b"\xff\xd8\xff\xe0" + os.urandom(size - 4))], {})
    writer.finish()
    return count


def replay(server: Server, rec_id: str) -> tuple[int, str, dict]:
    url = f"{server.ws_url}/recordings/replay?rec_id={rec_id}&prefix=replay:&fullspeed=true&interval=5" \
          f"&token={server.token}"
    last: dict = {}
    with connect(url, max_size=None, open_timeout=30) as ws:
        while True:
            try:
                last = json.loads(ws.recv(timeout=600))
            except ConnectionClosed as closed:
                return closed.rcvd.code, closed.rcvd.reason, last


def measure(server: Server, http: httpx.Client, pid: int, name: str, path: Path, entries: int) -> dict:
    """Upload, info and replay of one file; the peak RSS over all three and over each."""
    before = status(pid, "VmRSS")
    peaks = []

    def phase(step):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        started = time.monotonic()
        value = step()
        peaks.append(status(pid, "VmHWM"))
        return value, time.monotonic() - started

    def send():
        with open(path, "rb") as f:
            return http.post(f"/recordings/upload/{name}/{name}.mcap", files={"file": (f"{name}.mcap", f)})

    reply, upload_s = phase(send)
    if reply.status_code != 200:
        raise RuntimeError(f"upload of {name} refused: {reply.text}")
    info, info_s = phase(lambda: http.get(f"/recordings/{name}").json())
    counted = sum(s["count"] for s in info["streams"].values())
    (code, reason, _), replay_s = phase(lambda: replay(server, name))
    if (code, counted) != (1000, entries):
        raise RuntimeError(f"{name}: replay closed {code} {reason!r}, info counted {counted} of {entries}")
    return {"file": name, "MiB": path.stat().st_size / MiB, "entries": entries, "upload s": upload_s,
            "info s": info_s, "replay s": replay_s, "RSS before MiB": before / MiB,
            "rise: upload": (peaks[0] - before) / MiB, "info": (peaks[1] - before) / MiB,
            "replay": (peaks[2] - before) / MiB, "peak - before MiB": (max(peaks) - before) / MiB}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="size of the file of many entries (MiB)")
    parser.add_argument("--large", type=int, default=16, help="raw entries of just under 16 MiB")
    parser.add_argument("--images", type=int, default=8, help="JPEG entries of just under 16 MiB")
    args = parser.parse_args(argv)
    rows = []
    plan = [("many", lambda p: write_raw(p, args.mib * 16, 64 * 1024, 4)),
            ("large", lambda p: write_raw(p, args.large, ENTRY_LIMIT, 2)),
            ("images", lambda p: write_images(p, args.images, ENTRY_LIMIT))]
    with tempfile.TemporaryDirectory(prefix="ptgstore-upload-bench-") as tmp, PrivateRedis(Path(tmp)) as redis:
        files = Path(tmp)
        write_raw(files / "warm.mcap", 64, 64 * 1024, 2)
        for name, write in plan:  # each on a server of its own, warmed up with a small file first
            path = files / f"{name}.mcap"
            entries = write(path)
            # the servers one after another on one Redis: one recordings directory (a deployment's)
            with Server(redis.url, max_len=1000, env={"PTGSTORE_RECORDINGS_DIR": str(files / "recordings")}) as server:
                http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"},
                                    timeout=600)
                pid = server.process.pid
                measure(server, http, pid, "warm", files / "warm.mcap", 64)  # every path once, code loaded
                http.delete("/recordings/warm").raise_for_status()  # (the next server warms up the same way)
                rows.append(measure(server, http, pid, name, path, entries))
            path.unlink()
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    worst = max(row["peak - before MiB"] for row in rows)
    print(f"largest rise of the server's RSS: {worst:.1f} MiB (budget {BUDGET / MiB:.0f} MiB)")
    return 0 if worst * MiB < BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
