"""Thin request handlers: parse, call the store or the hub, shape the reply."""
from __future__ import annotations

from starlette.exceptions import HTTPException

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def query_bool(params, name: str, default: bool = False) -> bool:
    """A true/false query parameter; anything else is a 400 naming it."""
    raw = params.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise HTTPException(400, f"{name} must be true or false, not {raw!r}")
