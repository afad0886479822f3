"""The many receiving ends of the side-by-side fan-out, as asyncio protocols that parse what arrives
in place: a ptgstore pull socket and a NATS core subscription.

A thousand pullers at 30 Hz are 30,000 messages a second into this one process; a coroutine per
message (a StreamReader's readexactly) would make the load generator the bottleneck of both sides.
Each protocol here parses every message in the buffer it was given, hands each entry to its
`Arrivals` and sets `done` once `expected` entries came.
"""
from __future__ import annotations

import asyncio
import base64
import os
import struct
import sys
import time
from urllib.parse import urlsplit

import orjson

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

_MEDIUM = struct.Struct("!H")
_LONG = struct.Struct("!Q")


class _Receiver(asyncio.Protocol):
    def __init__(self, arrivals, key: str, expected: int):
        self.arrivals, self.key, self.expected = arrivals, key, expected
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()  # set once subscribed (handshake done, SUB acknowledged)
        self.done = loop.create_future()
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        for future in (self.ready, self.done):
            if not future.done():
                future.set_exception(ConnectionError(f"connection lost: {exc}"))

    def _arrived(self, data) -> None:
        self.arrivals.add(self.key, data)
        if self.arrivals.total >= self.expected and not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class PullSocket(_Receiver):
    """A ptgstore pull socket (`/data/{key}/pull`, JSON headers): every entry of every delivery."""

    def __init__(self, url: str, arrivals, key: str, expected: int):
        super().__init__(arrivals, key, expected)
        parts = urlsplit(url)
        self.request = (f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
                        f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                        f"Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.header: list | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.ready.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(bytes(buffer[:end]).decode(errors="replace")))
                return
            del buffer[:end + 4]
            self.ready.set_result(None)
        view = memoryview(buffer)
        at, size_all = 0, len(buffer)
        try:
            while size_all - at >= 2:
                opcode, size = buffer[at] & 0x0F, buffer[at + 1] & 0x7F
                start = at + 2
                if size == 126:
                    if size_all - at < 4:
                        break
                    size = _MEDIUM.unpack_from(buffer, start)[0]
                    start += 2
                elif size == 127:
                    if size_all - at < 10:
                        break
                    size = _LONG.unpack_from(buffer, start)[0]
                    start += 8
                end = start + size
                if end > size_all:
                    break
                at = end
                if opcode == 0x1:
                    self.header = orjson.loads(view[start:end])
                elif opcode == 0x2:
                    self._delivery(view[start:end])
                elif opcode == 0x9:  # ping: pong with the same payload (masked, as a client must)
                    mask = os.urandom(4)
                    self.transport.write(bytes([0x8A, 0x80 | size]) + mask + apply_mask(bytes(view[start:end]), mask))
                elif opcode == 0x8:
                    self.close()
        finally:
            view.release()
        del buffer[:at]

    def _delivery(self, blob: memoryview) -> None:
        header, self.header = self.header, None
        starts = [item[2] for item in header] + [len(blob)]
        for k in range(len(header)):
            self._arrived(blob[starts[k]:starts[k + 1]])


class NatsSubscriber(_Receiver):
    """A NATS connection with one core subscription on subject `key`."""

    def __init__(self, arrivals, key: str, expected: int):
        super().__init__(arrivals, key, expected)
        self.connected = False

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        view = memoryview(buffer)
        at, size_all = 0, len(buffer)
        try:
            while True:
                line_end = buffer.find(b"\r\n", at)
                if line_end < 0:
                    break
                op = bytes(buffer[at:at + 4])
                if op == b"MSG ":
                    size = int(buffer[buffer.rfind(b" ", at, line_end) + 1:line_end])
                    end = line_end + 2 + size
                    if end + 2 > size_all:
                        break
                    self._arrived(view[line_end + 2:end])
                    at = end + 2
                    continue
                at = line_end + 2
                if op == b"PING":
                    self.transport.write(b"PONG\r\n")
                elif op == b"PONG":
                    if not self.ready.done():
                        self.ready.set_result(None)  # the SUB before the PING is in place
                elif op == b"INFO" and not self.connected:
                    self.connected = True
                    self.transport.write(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\n'
                                         b"SUB %s 1\r\nPING\r\n" % self.key.encode())
                elif op == b"-ERR":
                    self.close()
        finally:
            view.release()
        del buffer[:at]


async def open_pull_socket(url: str, arrivals, key: str, expected: int) -> PullSocket:
    parts = urlsplit(url)
    _, protocol = await asyncio.get_running_loop().create_connection(
        lambda: PullSocket(url, arrivals, key, expected), parts.hostname, parts.port)
    await asyncio.wait_for(protocol.ready, 30)
    return protocol


async def open_nats_subscriber(port: int, arrivals, subject: str, expected: int) -> NatsSubscriber:
    _, protocol = await asyncio.get_running_loop().create_connection(
        lambda: NatsSubscriber(arrivals, subject, expected), "127.0.0.1", port)
    await asyncio.wait_for(protocol.ready, 30)
    return protocol


# -- receivers in processes of their own ----------------------------------------------------------
# One process parsing 30,000 messages a second is the bottleneck of a 1,000-puller fan-out on two
# shared cores; the receivers are spread over a few processes (`python -m benchmarks.pullers`), each
# reporting what its receivers got as JSON once they are done.

def _summary(arrivals: list) -> dict:
    return {"total": [a.total for a in arrivals], "corrupt": [a.corrupt for a in arrivals],
            "last": [a.last for a in arrivals], "latencies": [a.latencies for a in arrivals]}


async def _child(args) -> None:
    from . import peer

    arrivals = [peer.Arrivals([args.key], args.size) for _ in range(args.count)]
    if args.kind == "ws":
        openers = [lambda a=a: open_pull_socket(args.target, a, args.key, args.expected) for a in arrivals]
    else:
        openers = [lambda a=a: open_nats_subscriber(int(args.target), a, args.key, args.expected) for a in arrivals]
    receivers = await peer.open_all(openers)
    print("ready", flush=True)
    await peer.all_done(receivers, time.monotonic() + args.seconds)
    for receiver in receivers:
        receiver.close()
    sys.stdout.write(orjson.dumps(_summary(arrivals)).decode() + "\n")
    sys.stdout.flush()


class Received:
    """What one receiver got, as a child process reported it (the fields `fanout_result` reads)."""

    def __init__(self, total: int, corrupt: int, last: float, latencies: list):
        self.total, self.corrupt, self.last, self.latencies = total, corrupt, last, latencies


class Spread:
    """`count` receivers over `processes` child processes: `async with Spread(...) as spread:` opens
    them all; `await spread.results(limit)` waits for each child's report (every receiver done, or its
    time up) and gives one `Received` per receiver."""

    def __init__(self, kind: str, target: str, key: str, count: int, expected: int, size: int, seconds: float,
                 processes: int = 2):
        shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
        self.commands = [[sys.executable, "-m", "benchmarks.pullers", kind, target, key, str(n), str(expected),
                          str(size), str(seconds)] for n in shares if n]
        self.children: list[asyncio.subprocess.Process] = []

    async def __aenter__(self) -> "Spread":
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        try:
            for command in self.commands:
                self.children.append(await asyncio.create_subprocess_exec(
                    *command, stdout=asyncio.subprocess.PIPE, env=env, limit=256 * 2**20))  # (a report is one line)
            for child in self.children:
                line = await asyncio.wait_for(child.stdout.readline(), 240)
                if line.strip() != b"ready":
                    raise RuntimeError(f"a receiver process failed to open its connections: {line[:200]!r}")
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def results(self, limit: float) -> list[Received]:
        out: list[Received] = []
        for child in self.children:
            line = await asyncio.wait_for(child.stdout.readline(), limit)
            report = orjson.loads(line)
            out += [Received(*fields) for fields in zip(report["total"], report["corrupt"], report["last"],
                                                         report["latencies"])]
        return out

    async def __aexit__(self, *exc_info) -> None:
        for child in self.children:
            if child.returncode is None:
                child.kill()
            await child.wait()


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.pullers")
    parser.add_argument("kind", choices=["ws", "nats"])
    parser.add_argument("target", help="the pull socket's URL (ws) or nats-server's port (nats)")
    parser.add_argument("key")
    for name in ("count", "expected", "size"):
        parser.add_argument(name, type=int)
    parser.add_argument("seconds", type=float, help="how long to wait for every entry, at most")
    args = parser.parse_args(argv)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(_child(args))


if __name__ == "__main__":
    main()
