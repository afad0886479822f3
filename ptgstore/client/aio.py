"""`AsyncClient`: ptgstore over HTTP and WebSockets as coroutines and async iterators (the blocking
`Client` in `sync.py` runs these same calls)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import AsyncGenerator, AsyncIterator, Iterable, Sequence
from urllib.parse import quote, urlencode

import httpx
import orjson
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..backoff import Backoff
from ..framing import BEGINNING, NEWEST, NOW, decode_header, parse_entry_id, unpack_entries
from .cursors import Entry, after, cursors_for, stream_list, stream_path
from .errors import (
    TRANSIENT_CLOSES, AuthError, NotFound, PtgError, StreamClosed, Unreachable, closed_error, detail_of, error_for,
)
from .pushing import Pusher, as_entries

DEFAULT_URL = "http://127.0.0.1:7890"


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # reads: sent again when their answer was lost
HTTP_RETRIES = 3  # sends again of such a request (about 0.4 s in all), then Unreachable


def _mcap_files(path) -> list[str]:
    """A local recording: one .mcap file, or a directory of them (a downloaded recording)."""
    if os.path.isdir(path):
        return [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".mcap")]
    return [path]


# -- the asynchronous client -------------------------------------------------------------------

class AsyncClient:
    """ptgstore over HTTP and WebSockets, as coroutines and async iterators."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, username: str | None = None,
                 password: str | None = None, *, timeout: float = 30.0, reconnect_timeout: float = 30.0,
                 max_batch_bytes: int = 8 * 1024 * 1024, max_batch_entries: int = 1000):
        # `host:port` alone means plain HTTP, as in a browser's address bar
        self.url = (url if "://" in url else "http://" + url).rstrip("/")
        self.ws_url = "ws" + self.url[4:] if self.url.startswith("http") else self.url
        self.token = token
        self.username = username
        self.password = password
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self.max_batch_bytes = max_batch_bytes
        self.max_batch_entries = max_batch_entries
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout)
        self._sockets: set = set()  # open pull and push sockets, closed with the client

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections, open pulls and pushers included."""
        await asyncio.gather(*(ws.close() for ws in list(self._sockets)))
        await self._http.aclose()

    # -- HTTP plumbing --------------------------------------------------------------------------

    async def _headers(self) -> dict:
        if self.token is None and self.username is not None:
            await self.login()
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _send(self, method: str, path: str, repeat: bool = False, **kwargs) -> httpx.Response:
        """One HTTP request. A read, or a request whose second run changes nothing more (`repeat`), is
        sent again when the connection failed before its answer came, a few times."""
        tries = 1 + (HTTP_RETRIES if repeat or method in SAFE_METHODS else 0)
        backoff = Backoff(0.05, 0.5)
        for attempt in range(tries):
            try:
                return await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == tries - 1:
                    raise Unreachable(f"cannot reach ptgstore at {self.url}: {exc}") from None
                await asyncio.sleep(backoff.failed())
        raise AssertionError("unreachable")

    async def _request(self, method: str, path: str, repeat: bool = False, **kwargs) -> httpx.Response:
        response = await self._send(method, path, repeat, headers=await self._headers(), **kwargs)
        if response.status_code >= 400:
            error = error_for(response.status_code, detail_of(response))
            if isinstance(error, AuthError) and not self.token:
                error = AuthError(error.detail, error.status, "no token: pass token=, or username= and password=")
            raise error
        return response

    async def _connect(self, path: str, params: dict):
        """An open WebSocket; a refused handshake or an unreachable server as a typed error."""
        url = f"{self.ws_url}{path}?{urlencode(params)}"
        try:
            ws = await ws_connect(url, additional_headers=await self._headers(), max_size=None,
                                  compression=None, open_timeout=self.timeout, close_timeout=5)
        except InvalidStatus as exc:
            response = exc.response
            body = response.body.decode("utf-8", "replace").strip() if response.body else ""
            try:
                body = str(orjson.loads(body).get("detail", body))
            except (ValueError, AttributeError):
                pass
            raise error_for(response.status_code, body or "no reason given") \
                from None
        # EOFError: a connection closed before the handshake's answer (websockets up to 14 raise it bare,
        # later releases wrap it in InvalidMessage, an InvalidHandshake)
        except (OSError, EOFError, InvalidHandshake, asyncio.TimeoutError) as exc:
            raise Unreachable(f"cannot open a websocket to {self.ws_url}: {exc}") from exc  # (the kind: pushing.py)
        self._sockets.add(ws)
        return ws

    async def _disconnect(self, ws) -> None:
        self._sockets.discard(ws)
        try:
            await ws.close()
        except BaseException:
            ws.transport.abort()  # the close itself cancelled (a blocking call interrupted): drop the connection
            raise

    # -- tokens and streams ---------------------------------------------------------------------

    async def login(self, username: str | None = None, password: str | None = None) -> str:
        """Get a token from `/token` (and use it from now on)."""
        form = {"username": username or self.username or "", "password": password or self.password or ""}
        response = await self._send("POST", "/token", repeat=True, data=form)  # (sent twice: two tokens, either good)
        if response.status_code >= 400:
            raise error_for(response.status_code, detail_of(response))
        self.token = response.json()["access_token"]
        return self.token

    async def derive_token(self, read: Sequence[str] = (), write: Sequence[str] = (), admin: bool = False,
                           ttl: int | None = None) -> str:
        """A new token narrower than this client's (`POST /token/derive`): `read`/`write` stream-id
        patterns, `admin`, `ttl` seconds. `Forbidden` when it asks for more than this token has."""
        reply = await self._request("POST", "/token/derive", data={"read": list(read), "write": list(write),
                                                                   "admin": str(admin).lower(),
                                                                   **({"ttl": str(ttl)} if ttl else {})})
        return reply.json()["access_token"]

    async def permissions(self) -> dict:
        """Who this client's token names and what it may do: `{user, read, write, admin, expires}`."""
        return (await self._request("GET", "/token/scope")).json()

    async def ping(self) -> bool:
        """True when the server and its store answer."""
        return (await self._request("GET", "/ping")).json() is True

    async def streams(self, info: bool = False) -> list:
        """Sorted stream ids, or their info objects with `info=True`."""
        return (await self._request("GET", "/streams", params={"info": str(info).lower()})).json()

    async def info(self, stream_id: str) -> dict:
        """A stream's info: `meta`, `length`, `first-entry`, `last-entry` and their times."""
        body = (await self._request("GET", f"/streams/{stream_path([stream_id])}")).json()
        if "error" in body:
            raise NotFound(body["error"], 200)
        return body

    async def update(self, stream_id: str, meta: dict, override: bool = False) -> dict:
        """Merge `meta` into the stream's metadata (replace it with `override=True`); answers the result."""
        response = await self._request("PUT", f"/streams/{stream_path([stream_id])}", True, content=orjson.dumps(meta),
                                       params={"override": str(override).lower()})
        return response.json()

    async def delete(self, stream_ids: str | Sequence[str]) -> list[str]:
        """Delete streams (entries and metadata); answers the ids that existed."""
        response = await self._request("DELETE", f"/streams/{stream_path(stream_list(stream_ids))}")
        return response.json()["deleted"]

    # -- entries --------------------------------------------------------------------------------

    async def push(self, stream_id: str, entries: bytes | Iterable[bytes], timestamps: Sequence | None = None
                   ) -> list[str]:
        """Store one entry (bytes) or many in `stream_id`; answers their ids in order.

        One entry is one HTTP upload; several, or any with `timestamps` (epoch seconds, or entry id
        strings to store under), go in batches over one push WebSocket (far faster than a multipart
        upload of many small parts).
        """
        data = as_entries(entries)
        if not data:
            return []
        if len(data) == 1 and timestamps is None:
            upload = [("file", ("entry", data[0], "application/octet-stream"))]
            return (await self._request("POST", f"/data/{stream_path([stream_id])}", files=upload)).json()
        async with self.pusher() as pusher:
            return await pusher.push(stream_id, data, timestamps)

    @contextlib.asynccontextmanager
    async def pusher(self, producer_id: str | None = None, first_seq: int = 1) -> AsyncIterator[Pusher]:
        """A push WebSocket for many pushes that carries on across interruptions (`pushing.py`):
        `async with client.pusher() as p: await p.push(sid, entries)`; `p.summary` says what it took.
        A producer id of your own (kept across runs) goes on from its `p.next_seq` of before."""
        pusher = Pusher(self, producer_id, first_seq)
        try:
            yield pusher
        finally:
            await pusher.aclose()

    async def read(self, stream_ids: str | Sequence[str], last_entry_id="0", count: int = 100) -> list[Entry]:
        """Up to `count` entries per stream strictly after `last_entry_id` (`0`: from the start, `*`: newest)."""
        sids = stream_list(stream_ids)
        params = {"last_entry_id": "+".join(cursors_for(last_entry_id, len(sids))), "count": count}
        response = await self._request("GET", f"/data/{stream_path(sids)}", params=params)
        header = decode_header(response.headers.get("entry-offset", "[]"))
        return [Entry(*entry) for entry in unpack_entries(header, response.content)]

    async def latest(self, stream_id: str | Sequence[str], count: int = 1) -> list[Entry]:
        """The newest `count` entries of a stream (of each stream), oldest first."""
        return await self.read(stream_id, NEWEST, count)

    async def pull(self, stream_ids: str | Sequence[str], last_entry_id="$", count: int = 100, *,
                   limit: int | None = None, timeout: float | None = None, latest: bool = False,
                   stop_when_caught_up: bool = False) -> AsyncIterator[Entry]:
        """Entries of one or many streams as they arrive, over a pull WebSocket.

        `last_entry_id`: `$` (only new entries), `0` (from the start), `*` (the newest `count`, or the
        newest `limit` when fewer), an entry id, a datetime or epoch seconds; one value or one per stream.
        `count` is the most entries per stream in one delivery; `limit` the most entries in all. Ends
        after `limit` entries, or once `timeout` seconds pass without data; otherwise runs until closed.
        A dropped connection is reopened from the last entry delivered of each stream, so nothing is
        lost or repeated. `stop_when_caught_up=True` reads history instead: the entries stored up to
        each stream's last entry when the call began, then ends (never waits for new entries).
        """
        async for delivery in self.pull_deliveries(stream_ids, last_entry_id, count, limit=limit,
                                                   timeout=timeout, latest=latest,
                                                   stop_when_caught_up=stop_when_caught_up):
            for entry in delivery:
                yield entry

    async def pull_deliveries(self, stream_ids: str | Sequence[str], last_entry_id="$", count: int = 100, *,
                              limit: int | None = None, timeout: float | None = None, latest: bool = False,
                              stop_when_caught_up: bool = False) -> AsyncGenerator[list[Entry], None]:
        """Like `pull`, but one list of entries per delivery (for workers that process batches)."""
        sids = stream_list(stream_ids)
        if limit is not None:
            # never fetch more than will be handed out: `*` then means the newest `limit` entries
            count = max(1, min(count, limit))
        cursors = dict(zip(sids, await self._resolve_now(sids, cursors_for(last_entry_id, len(sids)))))
        if stop_when_caught_up:
            async for delivery in self._history(cursors, count, limit):
                yield delivery
            return
        params = {"count": count, "latest": str(latest).lower()}
        if timeout is not None:
            params["timeout"] = int(timeout * 1000)
        remaining = limit
        lost_at = None
        connected = False
        while remaining is None or remaining > 0:
            try:
                ws = await self._connect(f"/data/{stream_path(sids)}/pull",
                                         {**params, "last_entry_id": "+".join(cursors.values())})
                connected, lost_at = True, None
                try:
                    while remaining is None or remaining > 0:
                        # after a reconnection nothing at or before a stream's cursor is handed out again
                        fresh = [e for e in await _receive_delivery(ws) if after(e.entry_id, cursors[e.stream_id])]
                        fresh = fresh[:remaining]
                        for entry in fresh:
                            cursors[entry.stream_id] = entry.entry_id
                        if remaining is not None:
                            remaining -= len(fresh)
                        if fresh:
                            yield fresh
                finally:
                    await self._disconnect(ws)
            except StreamClosed as exc:
                if exc.code == 1000:
                    return
                if exc.code not in TRANSIENT_CLOSES:
                    raise
                lost_at = await self._pause_before_retry(lost_at, exc)
            except Unreachable as exc:
                if not connected:
                    raise  # a wrong URL or a server not started: say so now
                lost_at = await self._pause_before_retry(lost_at, exc)

    async def _history(self, cursors: dict[str, str], count: int, limit: int | None
                       ) -> AsyncIterator[list[Entry]]:
        """Pages of stored entries (REST reads, which never wait) after each cursor, up to the stream's
        last entry when the reading began; a stream that does not exist or has nothing more is done."""
        cursors = dict(cursors)
        lasts = dict(zip(cursors, await asyncio.gather(*(self._last_entry(sid) for sid in cursors))))
        ends = {sid: end for sid, end in lasts.items() if end is not None}
        active = [sid for sid, end in ends.items()
                  if cursors[sid] == NEWEST or parse_entry_id(cursors[sid]) < parse_entry_id(end)]
        remaining = limit
        while active and (remaining is None or remaining > 0):
            page = await self.read(active, [cursors[sid] for sid in active], count)
            delivery = [e for e in page if parse_entry_id(e.entry_id) <= parse_entry_id(ends[e.stream_id])]
            delivery = delivery[:remaining]
            for entry in delivery:
                cursors[entry.stream_id] = entry.entry_id
            moved = {entry.stream_id for entry in delivery}
            active = [sid for sid in active
                      if sid in moved and parse_entry_id(cursors[sid]) < parse_entry_id(ends[sid])]
            if remaining is not None:
                remaining -= len(delivery)
            if delivery:
                yield delivery

    async def _last_entry(self, stream_id: str) -> str | None:
        """The id of the stream's newest entry, or None when it has none (or does not exist)."""
        try:
            return (await self.info(stream_id)).get("last-entry")
        except NotFound:
            return None

    async def _resolve_now(self, sids: list[str], cursors: list[str]) -> list[str]:
        """Turn `$` into each stream's last id now, so that a reconnection still starts from that moment."""
        resolved = list(cursors)
        now = [i for i, cursor in enumerate(cursors) if cursor == NOW]
        for i, last_id in zip(now, await asyncio.gather(*(self._last_id(sids[i]) for i in now))):
            resolved[i] = last_id
        return resolved

    async def _last_id(self, stream_id: str) -> str:
        """What `$` means now: the stream's last generated id (`0-0` when it has none yet)."""
        try:
            info = await self.info(stream_id)
        except NotFound:
            return BEGINNING
        return info.get("last-generated-id") or BEGINNING

    async def _pause_before_retry(self, lost_at: float | None, exc: PtgError) -> float:
        """Wait a little before reconnecting; give up with `exc` after `reconnect_timeout` seconds."""
        now = time.monotonic()
        lost_at = now if lost_at is None else lost_at
        if now - lost_at > self.reconnect_timeout:
            raise exc
        await asyncio.sleep(min(0.05 + (now - lost_at) / 4, 1.0))
        return lost_at

    # -- recordings -----------------------------------------------------------------------------

    async def recordings(self, info: bool = False, hidden: bool = False) -> list:
        """Recording names (hidden ones too with `hidden=True`), or their info objects with `info=True`."""
        params = {"info": str(info).lower(), "hidden": str(hidden).lower()}
        return (await self._request("GET", "/recordings", params=params)).json()

    async def recording(self, name: str) -> dict:
        """A recording's info: per stream count, bytes, first/last entry; duration, size, files, gaps."""
        return (await self._request("GET", f"/recordings/{quote(name, safe='')}")).json()

    async def current_recording(self, info: bool = False):
        """The active recording's name (None when none), or its info with `info=True`."""
        return (await self._request("GET", "/recordings/current", params={"info": str(info).lower()})).json()

    async def start_recording(self, name: str | None = None, streams: str | Sequence[str] | None = None) -> str:
        """Start recording every stream (or only `streams`); answers the recording's name."""
        params = {}
        if name:
            params["rec_id"] = name
        if streams:
            params["sid"] = "+".join(stream_list(streams))
        return (await self._request("PUT", "/recordings/start", params=params)).json()

    async def stop_recording(self) -> bool:
        """Stop the active recording once its files are written; False when none was active."""
        return bool((await self._request("PUT", "/recordings/stop", timeout=max(self.timeout, 90))).json())

    async def rename_recording(self, name: str, new_name: str) -> None:
        await self._request("PUT", f"/recordings/{quote(name, safe='')}/rename/{quote(new_name, safe='')}")

    async def delete_recording(self, name: str) -> None:
        await self._request("DELETE", f"/recordings/{quote(name, safe='')}")

    async def hide_recording(self, name: str, hidden: bool = True) -> None:
        """Leave a recording out of the list (or put it back with `hidden=False`)."""
        await self._request("PUT", f"/recordings/{quote(name, safe='')}/{'hide' if hidden else 'unhide'}")

    async def download_recording(self, name: str, out_dir: str = ".", progress=None) -> list[str]:
        """Write a recording's files (MCAP segments, info.json) into `out_dir/name/`; answers their paths.
        `progress(bytes)` is called as data arrives."""
        info = await self.recording(name)
        target = os.path.join(out_dir, name)
        os.makedirs(target, exist_ok=True)
        paths = []
        for file in [*info["files"], "info.json"]:
            path = os.path.join(target, file)
            url = f"/recordings/static/{quote(name, safe='')}/{quote(file, safe='')}"
            async with self._http.stream("GET", url, headers=await self._headers()) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_for(response.status_code, detail_of(response))
                with open(path + ".part", "wb") as out:
                    async for chunk in response.aiter_bytes(1024 * 1024):
                        out.write(chunk)
                        if progress is not None:
                            progress(len(chunk))
            os.replace(path + ".part", path)
            paths.append(path)
        return paths

    async def replay_recording(self, name: str, streams: str | Sequence[str] | None = None, prefix: str = "",
                               speed: float | None = 1.0, interval: float = 1.0, keep_ids: bool = False,
                               progress=None) -> dict:
        """Replay a recording on the server into live streams `prefix + stream`, at `speed` times the
        recorded pace (None: as fast as possible); `progress(report)` gets each progress report.
        Answers the last report once the replay is done."""
        params = {"rec_id": name, "prefix": prefix, "interval": interval,
                  "fullspeed": str(speed is None).lower(), "keep_ids": str(keep_ids).lower()}
        if speed is not None:
            params["speed"] = speed
        if streams:
            params["sid"] = "+".join(stream_list(streams))
        ws = await self._connect("/recordings/replay", params)
        report: dict = {}
        try:
            while True:
                try:
                    report = orjson.loads(await ws.recv())
                except ConnectionClosed as exc:
                    if exc.rcvd is not None and exc.rcvd.code == 1000:
                        return report
                    raise closed_error(exc) from None
                if progress is not None:
                    progress(report)
        finally:
            await self._disconnect(ws)

    async def replay_file(self, path: str, streams: str | Sequence[str] | None = None, prefix: str = "",
                          speed: float | None = 1.0, progress=None) -> dict[str, int]:
        """Replay a local MCAP recording through the push protocol (entries stamped now), paced like
        the server's replay; `progress(stream, entries)` after each batch. Answers entries per stream."""
        # imported here: MCAP reading (mcap, zstandard, lz4) is for this call alone
        from ..recordings.mcapfiles import read_messages
        from ..recordings.replay import paced
        files = sorted(_mcap_files(path))
        wanted = stream_list(streams) if streams else None
        sent: dict[str, int] = {}
        async with self.pusher() as pusher:
            async for batch in paced(read_messages(files, wanted), speed):
                await pusher.push_items([(prefix + m.sid, None, m.data) for m in batch])
                for m in batch:
                    sent[m.sid] = sent.get(m.sid, 0) + 1
                if progress is not None:
                    progress(batch[0].sid, len(batch))
        return sent


async def _receive_delivery(ws) -> list[Entry]:
    """One pull delivery (a JSON header, then the blob) as entries."""
    try:
        items = decode_header(await ws.recv())
        blob = await ws.recv()
    except ConnectionClosed as exc:
        raise closed_error(exc) from None
    return [Entry(*entry) for entry in unpack_entries(items, blob)]
