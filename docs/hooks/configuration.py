"""MkDocs hook: the configuration page's table of settings, made from `ptgstore.settings.Settings` at build time.

Each field of `Settings` read from the environment carries its variable, reader and meaning in its metadata
(`ptgstore.settings.env`); the same metadata drives `Settings.from_env`, so the page cannot drift from the code.
docs/configuration.md holds the prose and the marker this hook replaces with the table.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- settings-table -->"
PAGE = "configuration.md"


def _settings_module() -> Any:
    root = str(Path(__file__).resolve().parents[2])  # the repository (docs/hooks/ is two levels down)
    if root not in sys.path:
        sys.path.insert(0, root)
    from ptgstore import settings

    return settings


def _default(setting: dataclasses.Field[Any], stated: str | None) -> str:
    if stated is not None:
        return stated
    if setting.default is dataclasses.MISSING:
        raise ValueError(f"Settings.{setting.name} has a computed default: give env(..., default=...) its wording")
    value = setting.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return "empty"
    if value == ():
        return "none"
    return f"`{value}`"


def settings_table() -> str:
    """The Markdown table: variable, default, meaning; one row per setting, in the order of the fields."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for setting, variable in _settings_module().variables():
        meaning = variable.meaning.replace("|", "\\|")
        rows.append(f"| `{variable.name}` | {_default(setting, variable.default)} | {meaning} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if markdown.count(MARKER) != 1:
        raise ValueError(f"docs/{PAGE} must hold the marker {MARKER} once")
    return markdown.replace(MARKER, settings_table())
