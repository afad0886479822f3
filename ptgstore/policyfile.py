"""The credential policy a server runs, kept in its data directory (`server.json`) for the command
line: `ptgstore token` mints tokens that server accepts, or says why it cannot."""
from __future__ import annotations

import json
from pathlib import Path

from .private import private_dir, write_private
from .settings import Settings

NAME = "server.json"


def record(settings: Settings) -> None:
    """Say in the data directory which policy this server runs, and where its users are (0600)."""
    directory = private_dir(Path(settings.data_dir))
    write_private(directory / NAME, json.dumps({"auth": settings.auth,
                                                "users_file": str(settings.users_path.resolve())}))


def recorded(data_dir: str) -> dict | None:
    """What the last server started on `data_dir` recorded, or None (none started, or unreadable)."""
    try:
        value = json.loads((Path(data_dir) / NAME).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and value.get("auth") in ("dev", "users") else None
