"""The credential policy a server runs, kept in its data directory (`server.json`) for the command
line: `ptgstore token` mints tokens that server accepts, or says why it cannot."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .settings import Settings

NAME = "server.json"


def record(settings: Settings) -> None:
    """Say in the data directory which policy this server runs, and where its users are (0600)."""
    directory = Path(settings.data_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / NAME
    tmp = path.with_name(f".{NAME}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump({"auth": settings.auth, "users_file": str(settings.users_path.resolve())}, file)
    os.replace(tmp, path)


def recorded(data_dir: str) -> dict | None:
    """What the last server started on `data_dir` recorded, or None (none started, or unreadable)."""
    try:
        value = json.loads((Path(data_dir) / NAME).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and value.get("auth") in ("dev", "users") else None
