"""`Client`: the calls of `AsyncClient`, blocking, for scripts; iterators instead of async ones.

Each client runs an event loop in a thread of its own, anyio's blocking portal
(`anyio.from_thread.start_blocking_portal`), and hands every call to it. The portal's thread is a
daemon, so a script that forgets `close()` still exits; the client is then closed at exit (or when
it is collected), its open pulls included.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import threading
import weakref
from typing import Any, AsyncGenerator, Awaitable, Callable, Generator, Iterator, TypeVar

from anyio.from_thread import start_blocking_portal

from .aio import DEFAULT_URL, AsyncClient
from .cursors import Entry
from .errors import PtgError
from .pushing import Pusher, PushSummary

T = TypeVar("T")
CANCEL_WAIT_S = 10.0  # the most an interrupted call takes to unwind (a WebSocket's close waits 5 s at most)


class _Portal:
    """The client's event loop thread, and calls into it that a Ctrl-C (or any exception in the
    calling thread) cancels."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._portal = self._stack.enter_context(start_blocking_portal())
        self._thread_id = self._portal.call(threading.get_ident)
        self.open = True

    def run(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await `func(*args, **kwargs)` on the portal's loop. Interrupted while waiting (a Ctrl-C),
        the call is cancelled, and has unwound when the interruption is raised here."""
        if not self.open:
            raise PtgError("the client is closed")
        ended = threading.Event()

        async def call() -> T:
            try:
                return await func(*args, **kwargs)
            finally:
                ended.set()

        future = self._portal.start_task_soon(call)
        try:
            return future.result()
        except BaseException:
            if not future.done():
                future.cancel()
                # a next call (closing the interrupted pull, say) must not find it still running
                ended.wait(CANCEL_WAIT_S)
            raise

    def iterate(self, agen: AsyncGenerator[T, None]) -> Generator[T, None, None]:
        """An async iterator stepped on the portal's loop, one hop per item; closed with the generator."""
        try:
            while True:
                try:
                    # stepped on the loop, whose hooks then know the generator and close it at shutdown
                    yield self.run(agen.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            if threading.get_ident() == self._thread_id:
                pass  # collected on the loop's own thread: waiting would deadlock, asyncio closes it when collected
            elif self.open and not sys.is_finalizing():
                self.run(agen.aclose)

    def close(self, client: AsyncClient) -> None:
        """Close `client`'s connections, then stop the loop (which closes async generators still open)."""
        if not self.open or threading.get_ident() == self._thread_id:
            return  # (collected on the loop's thread: it cannot wait for itself; the daemon thread stays)
        try:
            self.run(client.aclose)
        finally:
            self.open = False
            self._stack.close()


def _blocking(method: Callable[..., Any]) -> Callable[..., Any]:
    """The blocking form of a coroutine method of the object's `_async`."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return self._portal.run(method, self._async, *args, **kwargs)

    return call


class BlockingPusher:
    """`Pusher` for scripts: the same methods, blocking."""

    def __init__(self, portal: _Portal, pusher: Pusher):
        self._portal = portal
        self._async = pusher

    @property
    def summary(self) -> PushSummary:
        return self._async.summary

    @property
    def producer_id(self) -> str:
        return self._async.producer_id

    @property
    def next_seq(self) -> int:
        return self._async.next_seq

    push = _blocking(Pusher.push)
    push_items = _blocking(Pusher.push_items)


class Client:
    """ptgstore for scripts: the calls of `AsyncClient`, blocking, with iterators instead of async ones."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, username: str | None = None,
                 password: str | None = None, **options: Any):
        self._async = AsyncClient(url, token, username, password, **options)
        self._portal = _Portal()
        # runs at close(), when the client is collected, or at exit (the portal's daemon thread still runs then)
        self._close = weakref.finalize(self, self._portal.close, self._async)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections, open pulls included, and stop the client's thread."""
        self._close()

    @property
    def token(self) -> str | None:
        return self._async.token

    @property
    def url(self) -> str:
        return self._async.url

    login = _blocking(AsyncClient.login)
    derive_token = _blocking(AsyncClient.derive_token)
    permissions = _blocking(AsyncClient.permissions)
    ping = _blocking(AsyncClient.ping)
    streams = _blocking(AsyncClient.streams)
    info = _blocking(AsyncClient.info)
    update = _blocking(AsyncClient.update)
    delete = _blocking(AsyncClient.delete)
    push = _blocking(AsyncClient.push)
    read = _blocking(AsyncClient.read)
    latest = _blocking(AsyncClient.latest)
    # recordings
    recordings = _blocking(AsyncClient.recordings)
    recording = _blocking(AsyncClient.recording)
    current_recording = _blocking(AsyncClient.current_recording)
    start_recording = _blocking(AsyncClient.start_recording)
    stop_recording = _blocking(AsyncClient.stop_recording)
    rename_recording = _blocking(AsyncClient.rename_recording)
    delete_recording = _blocking(AsyncClient.delete_recording)
    hide_recording = _blocking(AsyncClient.hide_recording)
    download_recording = _blocking(AsyncClient.download_recording)
    replay_recording = _blocking(AsyncClient.replay_recording)
    replay_file = _blocking(AsyncClient.replay_file)

    @functools.wraps(AsyncClient.pull_deliveries)
    def pull_deliveries(self, *args: Any, **kwargs: Any) -> Generator[list[Entry], None, None]:
        # a generator of this client, so that the client lives as long as the iteration
        yield from self._portal.iterate(self._async.pull_deliveries(*args, **kwargs))

    @functools.wraps(AsyncClient.pull)
    def pull(self, *args: Any, **kwargs: Any) -> Iterator[Entry]:
        # one hop to the loop thread per delivery, not per entry
        with contextlib.closing(self.pull_deliveries(*args, **kwargs)) as deliveries:
            for delivery in deliveries:
                yield from delivery

    @contextlib.contextmanager
    def pusher(self, producer_id: str | None = None, first_seq: int = 1) -> Iterator[BlockingPusher]:
        """A push WebSocket for many pushes: `with client.pusher() as p: p.push(sid, entries)`.

        (Not the portal's `wrap_async_context_manager`: a Ctrl-C in the block would be raised again
        inside the portal's task group and stop its loop; here it stays in the calling thread.)"""
        pusher = Pusher(self._async, producer_id, first_seq)
        try:
            yield BlockingPusher(self._portal, pusher)
        finally:
            if self._portal.open:
                self._portal.run(pusher.aclose)
