"""Passwords and the users file of the `users` policy.

The file is a JSON object, one key per account. Its value is either the account's password hash
(the format before permissions, still read and still written for accounts with full access), or an
object `{"password": hash, "read": [patterns], "write": [patterns], "admin": bool}`: see
permissions.account_rights for what a record without permissions means.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from .permissions import Rights

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """A salted scrypt hash of `password`, self-describing so parameters can change later."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    params = f"{_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}"
    return f"scrypt${params}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a hash made by `hash_password` (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError, AttributeError):
        return False
    return hmac.compare_digest(actual, expected)


def password_generation(stored_hash: str) -> str:
    """A short fingerprint of a user's password hash, carried in their tokens (`gen`): a new
    password (a new salted hash) revokes every token issued before it."""
    return hashlib.sha256(stored_hash.encode()).hexdigest()[:16]


# a hash checked against when the user is unknown, so both refusals take as long
DUMMY_HASH = hash_password(secrets.token_hex(8))


def password_of(record: object) -> str | None:
    """The password hash of a users-file record (either format), or None when it has none."""
    if isinstance(record, dict):
        record = record.get("password")
    return record if isinstance(record, str) else None


def make_record(password_hash: str, rights: Rights) -> str | dict:
    """A users-file record: the bare hash for full access (readable by earlier versions), else an object."""
    if rights.full:
        return password_hash
    return {"password": password_hash, **rights.as_claim()}


def read_users(path: Path) -> dict:
    """The users file as {name: record}; a missing file means no users."""
    try:
        users = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    if not isinstance(users, dict):
        raise ValueError(f"{path} is not a users file (expected a JSON object)")
    return users


def write_users(path: Path, users: dict) -> None:
    """Replace the users file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(users, file, indent=2, sort_keys=True)
    os.replace(tmp, path)
