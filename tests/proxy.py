"""A small TCP round-robin proxy on loopback (asyncio, in a thread): each connection goes to the next backend."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading

from conftest import free_port, wait_until


class RoundRobinProxy:
    def __init__(self, backends: list[int]):
        self.backends = backends
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.routed: list[int] = []  # the backend port of each connection, in order
        self._next = itertools.cycle(backends)
        self._loop = asyncio.new_event_loop()
        self._server = None
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
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
