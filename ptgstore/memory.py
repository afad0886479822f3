"""How the process's C allocator treats the large buffers of sensor frames.

glibc gives large blocks back to the kernel as soon as they are freed (blocks over 128 KiB
come from mmap, and free memory at the top of the heap is trimmed), so every frame that
arrives touches fresh pages: a 512 KiB WebSocket message then costs four times the work of
its copies in page faults (measured: 190 µs of parsing instead of 50). Keeping a bounded
amount of freed memory lets the next frame reuse it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger("ptgstore.memory")

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mib: int) -> bool:
    """Have glibc keep up to `mib` MiB of freed memory for reuse and serve blocks up to `mib`/4 MiB
    from its heap. Returns whether it applied (0, or a C library other than glibc, leaves it alone)."""
    if mib <= 0 or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        keep = mib * 1024 * 1024
        applied = libc.mallopt(_M_MMAP_THRESHOLD, keep // 4) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, keep) == 1
    except (OSError, AttributeError):
        applied = False
    if not applied:
        log.debug("could not tune the C allocator")
    return applied
