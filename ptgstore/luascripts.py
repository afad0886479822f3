"""The Lua scripts ptgstore runs in Redis: their text, read from `ptgstore/lua/` (package data), and
how one is called (by its hash, loaded on the server that lacks it).

A line `--#include NAME.lua` in a script stands for the text of that file (a part two scripts share).
"""
from __future__ import annotations

import functools
import hashlib
from importlib.resources import files
from typing import Sequence

from .connections import Connections, NoScriptError

INCLUDE = "--#include "


@functools.cache
def lua(name: str) -> str:
    """The text of `ptgstore/lua/<name>`, its `--#include` lines replaced by the files they name."""
    text = (files("ptgstore") / "lua" / name).read_text(encoding="utf-8")
    return "".join(lua(line[len(INCLUDE):].strip()) if line.startswith(INCLUDE) else line
                   for line in text.splitlines(keepends=True))


def runner(connections: Connections, text: str):
    """A Lua script, called as `await script(keys=[...], args=[...])`, run on the server holding
    its keys (all in one slot on a cluster) by its hash, loaded there when that server lacks it."""
    sha = hashlib.sha1(text.encode()).hexdigest()

    async def run(keys: Sequence, args: Sequence = ()):
        try:
            return await connections.once(keys[0], "EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:  # nothing ran: a restarted or flushed Redis forgot the script
            await connections.once(keys[0], "SCRIPT", "LOAD", text)
            return await connections.once(keys[0], "EVALSHA", sha, len(keys), *keys, *args)

    return run
