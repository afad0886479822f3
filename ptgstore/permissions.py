"""Who may do what: stream-id patterns for reading and writing, and the admin flag, as one `Scope`.

A scope is what a token may do right now: the intersection of what the token claims (its `scope`
claim, when it has one) and what its account may do (the users file, read again when it changes).
Each of the two is one `Layer` per permission: a list of glob patterns compiled into one regular
expression. Verdicts are remembered per stream id, so the push path pays a dictionary lookup per
batch stream, not a pattern match.

Pattern syntax (`fnmatch`, case-sensitive): `*` any run of characters (`:` included), `?` one
character, `[abc]` / `[!abc]` one of / none of; everything else stands for itself.
"""
from __future__ import annotations

import fnmatch
import functools
import json
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

PERMISSIONS = ("read", "write", "admin")
MAX_PATTERNS = 32  # per list: a token travels in URLs, whose length servers bound
MAX_PATTERN_BYTES = 256  # as long as a stream id
MAX_CLAIM_BYTES = 2048  # a token's scope claim: tokens travel in WebSocket URLs, which servers bound (8 KiB)
VERDICTS = 256  # stream ids whose verdict one grant remembers (a token's scope is kept per token)
LAYERS = 1024  # compiled pattern lists kept, shared by every token and account listing the same
_WILDCARDS = frozenset("*?[]")


class Forbidden(Exception):  # not PermissionError: that is an OSError, which routes take for a client gone
    """A valid token without the permission a request needs (403 over HTTP, close 1008)."""


class BadPatterns(ValueError):
    """Pattern lists that cannot be granted: empty, too long, too many, or with a '+' or control character."""


def check_pattern(pattern: object) -> str:
    """`pattern` when it can be granted, else BadPatterns saying why."""
    if not isinstance(pattern, str) or not pattern:
        raise BadPatterns(f"a pattern is a non-empty string, not {pattern!r}")
    if len(pattern.encode("utf-8", "surrogatepass")) > MAX_PATTERN_BYTES:
        raise BadPatterns(f"pattern longer than {MAX_PATTERN_BYTES} bytes")
    if "+" in pattern:
        raise BadPatterns(f"pattern {pattern!r} contains '+' (list several patterns instead)")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in pattern):
        raise BadPatterns("pattern contains a control character")
    return pattern


def check_patterns(patterns: object, what: str = "patterns") -> tuple[str, ...]:
    """A list of patterns, each checked, duplicates dropped, in the given order."""
    if not isinstance(patterns, (list, tuple)):
        raise BadPatterns(f"{what} must be a list of patterns")
    if len(patterns) > MAX_PATTERNS:
        raise BadPatterns(f"more than {MAX_PATTERNS} {what}")
    return tuple(dict.fromkeys(check_pattern(p) for p in patterns))


def _plain_glob(pattern: str) -> bool:
    """Whether `pattern`'s only wildcard is `*` (no `?`, no `[...]`)."""
    return "?" not in pattern and "[" not in pattern and "]" not in pattern


class Layer:
    """One list of patterns, compiled once into a single regular expression."""

    __slots__ = ("patterns", "everything", "_match")

    def __init__(self, patterns: Sequence[str]):
        self.patterns = tuple(patterns)
        self.everything = "*" in self.patterns
        self._match = None
        if self.patterns and not self.everything:
            joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in self.patterns)
            self._match = re.compile(joined, re.DOTALL).match

    def allows(self, sid: str) -> bool:
        return self.everything or (self._match is not None and self._match(sid) is not None)

    def covers(self, pattern: str) -> bool:
        """Whether every stream id `pattern` matches is matched here (conservative: may say no).

        Covered when it is one of our patterns, or when it and one of ours use no wildcard but
        `*` and ours matches it taken literally as a string (`hl1:*` covers `hl1:cam*`). With only
        `*` on both sides that is exact: each `*` of the narrower pattern falls where ours has one.
        Patterns with `?` or `[...]` are covered only by an identical pattern or by `*`.
        """
        if self.everything or pattern in self.patterns:
            return True
        if not _plain_glob(pattern):
            return False
        return any(_plain_glob(ours) and fnmatch.fnmatchcase(pattern, ours) for ours in self.patterns)


@functools.lru_cache(maxsize=LAYERS)
def layer(patterns: tuple[str, ...]) -> Layer:
    """The compiled layer of `patterns`, compiled once for every scope that lists the same."""
    return Layer(patterns)


NONE = layer(())


class Grant:
    """One permission (read or write) as the intersection of layers, with remembered verdicts."""

    __slots__ = ("layers", "everything", "_verdicts")

    def __init__(self, layers: Iterable[Layer]):
        self.layers = tuple(layer for layer in layers if not layer.everything)
        self.everything = not self.layers
        self._verdicts: dict[str, bool] = {}

    def allows(self, sid: str) -> bool:
        if self.everything:
            return True
        verdict = self._verdicts.get(sid)
        if verdict is None:
            verdict = all(layer.allows(sid) for layer in self.layers)
            if len(self._verdicts) >= VERDICTS:
                self._verdicts.clear()  # a caller naming endless streams: start over, stay bounded
            self._verdicts[sid] = verdict
        return verdict

    def covers(self, pattern: str) -> bool:
        return all(layer.covers(pattern) for layer in self.layers)

    def patterns(self) -> list[str]:
        """The patterns this grant allows, as one list: exact for one layer; for several, the patterns
        of each that all the others cover (a subset of the intersection, possibly smaller)."""
        if self.everything:
            return ["*"]
        if len(self.layers) == 1:
            return list(self.layers[0].patterns)
        kept = [p for layer in self.layers for p in layer.patterns if self.covers(p)]
        return list(dict.fromkeys(kept))


@dataclass(frozen=True)
class Rights:
    """Permissions as written down (an account's in the users file, or a token's claim); None = all."""

    read: tuple[str, ...] = ("*",)
    write: tuple[str, ...] = ("*",)
    admin: bool = True

    @classmethod
    def from_record(cls, record: dict) -> "Rights":
        """From a users-file record or a token's `scope` claim; BadPatterns when malformed. Lists
        not given are empty, admin not given is false (a record without any of them is full access:
        see `account_rights`)."""
        admin = record.get("admin", False)
        if not isinstance(admin, bool):
            raise BadPatterns("admin must be true or false")
        return cls(check_patterns(record.get("read", []), "read patterns"),
                   check_patterns(record.get("write", []), "write patterns"), admin)

    def as_claim(self) -> dict:
        return {"read": list(self.read), "write": list(self.write), "admin": self.admin}

    def claimable(self) -> "Rights":
        """These rights when they fit in a token's claim, else BadPatterns saying so."""
        size = len(json.dumps(self.as_claim(), separators=(",", ":")).encode())
        if size > MAX_CLAIM_BYTES:
            raise BadPatterns(f"the patterns take {size} bytes, more than a token carries ({MAX_CLAIM_BYTES}): "
                              "ask for fewer or shorter ones")
        return self

    @property
    def full(self) -> bool:
        return self == FULL_RIGHTS


FULL_RIGHTS = Rights()


def account_rights(record: object) -> Rights:
    """An account's rights from its users-file record: a bare password hash (the format before
    permissions) or a record listing none of read, write or admin is full access."""
    if not isinstance(record, dict) or not any(key in record for key in PERMISSIONS):
        return FULL_RIGHTS
    return Rights.from_record(record)


class Scope:
    """What a caller may do: `can_read(sid)`, `can_write(sid)`, `admin`."""

    __slots__ = ("read", "write", "admin")

    def __init__(self, read: Grant, write: Grant, admin: bool):
        self.read, self.write, self.admin = read, write, admin

    @classmethod
    def of(cls, *rights: Rights) -> "Scope":
        """The intersection of several written-down rights (a token's claim and its account's)."""
        return cls(Grant(layer(r.read) for r in rights), Grant(layer(r.write) for r in rights),
                   all(r.admin for r in rights))

    @property
    def everything(self) -> bool:
        return self.admin and self.read.everything and self.write.everything

    def can_read(self, sid: str) -> bool:
        return self.read.allows(sid)

    def can_write(self, sid: str) -> bool:
        return self.write.allows(sid)

    def require(self, permission: str, sids: Iterable[str] | None = (), action: str = "do this") -> None:
        """Forbidden (naming the first stream refused and the permission) unless all are allowed
        (`sids` None: every stream, present and future); for `admin`, naming the `action` refused."""
        if permission == "admin":
            if not self.admin:
                raise Forbidden(f"forbidden: admin permission needed to {action}")
            return
        grant = self.read if permission == "read" else self.write
        if grant.everything:
            return
        if sids is None:
            raise Forbidden(f"forbidden: no {permission} permission on every stream")
        for sid in sids:
            if not grant.allows(sid):
                raise Forbidden(f"forbidden: no {permission} permission on stream {_short(sid)}")

    def narrowed(self, wanted: Rights) -> Rights:
        """`wanted` when this scope covers all of it, else Forbidden naming what is not covered."""
        for permission, patterns in (("read", wanted.read), ("write", wanted.write)):
            grant = self.read if permission == "read" else self.write
            for pattern in patterns:
                if not grant.covers(pattern):
                    raise Forbidden(f"forbidden: {permission} {_short(pattern)} is more than this token may")
        if wanted.admin and not self.admin:
            raise Forbidden("forbidden: admin is more than this token may")
        return wanted

    def describe(self) -> dict:
        """The patterns and flag a client can show (see Grant.patterns)."""
        return {"read": self.read.patterns(), "write": self.write.patterns(), "admin": self.admin}


def _short(text: str, limit: int = 60) -> str:
    """`text` quoted, cut to fit a WebSocket close reason beside the rest of the sentence."""
    if len(text.encode()) <= limit:
        return repr(text)
    cut = text.encode()[:limit].decode(errors="ignore")
    return repr(cut + "…")


EVERYTHING = Scope.of(FULL_RIGHTS)
NOTHING = Scope(Grant([NONE]), Grant([NONE]), False)
NO_RIGHTS = Rights((), (), False)
