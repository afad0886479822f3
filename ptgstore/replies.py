"""Redis replies read as text, and entry ids as times."""
from __future__ import annotations

from datetime import datetime, timezone


def text(value):
    """A reply with its bytes decoded (in lists and dicts too)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [text(v) for v in value]
    if isinstance(value, dict):
        return {text(k): text(v) for k, v in value.items()}
    return value


def entry_time_iso(entry_id: str | None) -> str | None:
    """The ISO time of an entry id's milliseconds (None for none)."""
    if not entry_id:
        return None
    ms = int(entry_id.split("-")[0])
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
