"""A lean WebSocket client for the side-by-side benchmark: the handshake, masked frames out,
frames in, over asyncio streams, and nothing else (no ping timer, no close handshake wait).

The NATS side is driven by a client of a few dozen lines (benchmarks/nats.py); driving ptgstore
through the full `websockets` client instead would charge ptgstore's side with a heavier load
generator on the same two cores. Masking uses websockets' C `apply_mask` (the client of a real
deployment masks the same way).
"""
from __future__ import annotations

import asyncio
import base64
import os
import struct
from urllib.parse import urlsplit

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class Closed(Exception):
    """The server closed the socket (`code`, `reason`)."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"closed {code} {reason}")
        self.code, self.reason = code, reason


class LeanWebSocket:
    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.target = parts.path + ("?" + parts.query if parts.query else "")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> "LeanWebSocket":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=4 * 2**20)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write((f"GET {self.target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            self.writer.close()
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            raise ConnectionError(f"handshake refused: {status}")
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        if self.writer is None or self.writer.is_closing():
            return
        try:
            self._frame(CLOSE, struct.pack("!H", 1000))
            self.writer.close()
        except (ConnectionError, RuntimeError):
            pass

    def _frame(self, opcode: int, data: bytes) -> None:
        size = len(data)
        mask = os.urandom(4)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0xFE, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, size)
        masked = apply_mask(data, mask)
        if size > 65536:
            self.writer.writelines((head, mask, masked))
        else:
            self.writer.write(head + mask + masked)

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            self._frame(TEXT, data.encode())
        else:
            self._frame(BINARY, data)
        await self.writer.drain()

    def send_nowait(self, data: bytes | str) -> None:
        if isinstance(data, str):
            self._frame(TEXT, data.encode())
        else:
            self._frame(BINARY, data)

    async def recv(self) -> bytes | str:
        """The next data message (text as str, binary as bytes); Closed when the server closed."""
        reader = self.reader
        parts = []
        while True:
            first, second = await reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", await reader.readexactly(8))[0]
            if second & 0x80:  # (a server must not mask; tolerated)
                mask = await reader.readexactly(4)
                data = apply_mask(await reader.readexactly(size), mask)
            else:
                data = await reader.readexactly(size) if size else b""
            opcode = first & 0x0F
            if opcode == PING:
                self._frame(PONG, data)
                continue
            if opcode == PONG:
                continue
            if opcode == CLOSE:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                raise Closed(code, data[2:].decode(errors="replace"))
            if opcode:
                kind = opcode
            parts.append(data)
            if first & 0x80:
                message = parts[0] if len(parts) == 1 else b"".join(parts)
                return message.decode() if kind == TEXT else message
