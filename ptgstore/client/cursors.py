"""What the client hands out and takes: entries, stream lists and the cursors a read starts after."""
from __future__ import annotations

from datetime import datetime
from typing import NamedTuple, Sequence
from urllib.parse import quote

from ..framing import NEWEST, FramingError, format_entry_id, id_before, parse_cursors, parse_entry_id, timestamp_spec
from .errors import BadRequest


class Entry(NamedTuple):
    """One entry: its stream, its id `<ms>-<seq>` and its bytes."""

    stream_id: str
    entry_id: str
    data: bytes


def stream_list(stream_ids: str | Sequence[str]) -> list[str]:
    """Stream ids from a list or an `a+b` string, each once, in order."""
    if isinstance(stream_ids, str):
        stream_ids = stream_ids.split("+")
    return list(dict.fromkeys(stream_ids))


def stream_path(stream_ids: Sequence[str]) -> str:
    """Stream ids as one path segment of a route."""
    # stream ids may hold '/' and ':' (the routes take the rest of the path); '+' separates them
    return "+".join(quote(sid, safe="/:*@!$&'(),;=") for sid in stream_ids)


def cursor_for_time(moment: datetime | float | int) -> str:
    """The `last_entry_id` that makes a read start at the first entry at or after `moment`.

    `moment` is epoch seconds or a datetime; a naive datetime (no `tzinfo`) is local time, as
    `datetime.timestamp()` takes it: `datetime(2024, 5, 1, 9, 30)` is 9:30 where the script runs.
    """
    if isinstance(moment, datetime):
        moment = moment.timestamp()
    ms = int(timestamp_spec(moment)[1:])  # `t<ms>`, rounded as the server rounds client times
    # cursors are exclusive: the id just before `<ms>-0`
    return format_entry_id(id_before((ms, 0)))


def _cursor(value: object) -> str:
    if isinstance(value, (datetime, int, float)) and not isinstance(value, bool):
        return cursor_for_time(value)
    if not isinstance(value, str):
        raise TypeError(f"last_entry_id must be a string, a datetime or epoch seconds, not {value!r}")
    return value


def cursors_for(value: object, count: int) -> list[str]:
    """One normalised cursor per stream: a list gives them in order, a single value (or `a+b`) repeats."""
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        return parse_cursors("+".join(_cursor(v) for v in values), count)
    except FramingError as exc:
        raise BadRequest(str(exc)) from None


def after(entry_id: str, cursor: str) -> bool:
    """Whether `entry_id` lies strictly after a normalised cursor (`*` accepts everything)."""
    return cursor == NEWEST or parse_entry_id(entry_id) > parse_entry_id(cursor)
