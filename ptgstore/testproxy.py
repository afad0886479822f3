"""TCP proxies on loopback (asyncio, in a thread of their own) for the tests and the soak scripts: round
robin over backends, and one that cuts connections. Not used by the service itself."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import threading

from .testing import free_port, wait_until


class RoundRobinProxy:
    def __init__(self, backends: list[int]):
        self.backends = backends
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.routed: list[int] = []  # the backend port of each connection, in order
        self._next = itertools.cycle(backends)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _pipe(self, reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, client_reader, client_writer) -> None:
        port = next(self._next)
        self.routed.append(port)
        try:
            backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(self._pipe(client_reader, backend_writer), self._pipe(backend_reader, client_writer))

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def __enter__(self) -> "RoundRobinProxy":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        wait_until(lambda: self._server is not None, what="the proxy")
        return self

    def __exit__(self, *exc_info) -> None:
        async def stop():
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class CuttingProxy(RoundRobinProxy):
    """A proxy that breaks connections: `cut()` drops every open one at once, and with
    `drop_replies` each chunk a backend sends after its handshake answer is, with that probability,
    thrown away with the connection (the server wrote an ack, the client never reads it).
    `chaos()` cuts at random moments in a thread of its own until stopped."""

    def __init__(self, backends: list[int], drop_replies: float = 0.0, seed: int = 0):
        super().__init__(backends)
        self.drop_replies = drop_replies
        self.drop_next = 0  # chunks (after a handshake) to throw away for sure, before drop_replies' chance
        self.random = random.Random(seed)
        self.cuts = 0
        self.dropped = 0
        self._open: set = set()  # (client writer, backend writer) of each open connection

    def set_backends(self, backends: list[int]) -> None:
        """Send new connections to these backends from now on."""
        self._loop.call_soon_threadsafe(setattr, self, "_next", itertools.cycle(backends))

    def cut(self) -> None:
        """Drop every open connection now (both sides see it reset, nothing more is passed on)."""
        asyncio.run_coroutine_threadsafe(self._cut_all(), self._loop).result(10)

    async def _cut_all(self) -> None:
        for pair in list(self._open):
            self._abort(pair)
            self.cuts += 1

    def _abort(self, pair) -> None:
        self._open.discard(pair)
        for writer in pair:
            writer.transport.abort()

    @contextlib.contextmanager
    def chaos(self, every: tuple[float, float] = (0.1, 0.4)):
        """Cut every open connection at random moments `every` seconds apart, while inside."""
        stop = threading.Event()

        def run():
            while not stop.wait(self.random.uniform(*every)):
                self.cut()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(10)

    async def _serve(self, client_reader, client_writer) -> None:
        port = next(self._next)
        self.routed.append(port)
        try:
            backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_writer.transport.abort()
            return
        pair = (client_writer, backend_writer)
        self._open.add(pair)
        try:
            await asyncio.gather(self._pipe(client_reader, backend_writer),
                                 self._replies(backend_reader, client_writer, pair))
        finally:
            self._open.discard(pair)

    async def _replies(self, reader, writer, pair) -> None:
        """Backend to client, losing chunks after the first (the handshake answer) now and then."""
        first = True
        try:
            while data := await reader.read(65536):
                if not first and (self.drop_next > 0 or self.random.random() < self.drop_replies):
                    self.drop_next = max(0, self.drop_next - 1)
                    self.dropped += 1
                    self._abort(pair)
                    return
                first = False
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
