"""Server-to-client WebSocket frames as bytes, made once and written to many sockets. No I/O.

A server's frames are not masked (RFC 6455, 5.1), so the same bytes serve every socket a
delivery goes to: the pull route encodes a delivery's header and blob messages once
(`delivery_frames`) and each socket's transport gets those bytes as they are.
"""
from __future__ import annotations

import struct

FRAMES = "ptgstore.frames"  # the scope extension where the server (`serving.FrameSink`) offers a socket's sink

TEXT = 0x1
BINARY = 0x2
FIN = 0x80
JOIN_BELOW = 64 * 1024  # a blob up to this size goes out in one piece with its frame heads (one write)

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def frame_head(opcode: int, length: int) -> bytes:
    """The head of one unfragmented, unmasked frame of `length` payload bytes."""
    if length < 126:
        return _SHORT.pack(FIN | opcode, length)
    if length < 65536:
        return _MEDIUM.pack(FIN | opcode, 126, length)
    return _LONG.pack(FIN | opcode, 127, length)


def text_frame(text: str) -> bytes:
    """A whole text message as one frame."""
    data = text.encode()
    return frame_head(TEXT, len(data)) + data


def delivery_frames(header: str | bytes, blob: bytes) -> tuple[bytes, ...]:
    """A delivery on the wire: its header message (text for a str, binary for bytes), then its blob
    as a binary message. One bytes object when the blob is small; else the heads, then the blob
    itself (a large blob is never copied)."""
    head_data = header.encode() if isinstance(header, str) else header
    heads = (frame_head(TEXT if isinstance(header, str) else BINARY, len(head_data)) + head_data
             + frame_head(BINARY, len(blob)))
    if len(blob) < JOIN_BELOW:
        return (heads + blob,)
    return heads, blob
