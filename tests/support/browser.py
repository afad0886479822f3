"""The browser tests' chromium: the system's own (found on PATH, never a downloaded browser), the
arguments it runs with, and what the dashboard tests share (a watched page, JPEG frames)."""
from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions"]
WAIT = 15_000  # ms: the longest any expectation waits


def chromium() -> str | None:
    """The system's chromium (Debian names it chromium, Ubuntu's and others' chromium-browser), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


# a browser test module's pytestmark: marked `browser` (deselect with -m 'not browser'), skipped without chromium
browser_test = [pytest.mark.browser,
                pytest.mark.skipif(chromium() is None, reason="chromium is not installed (apt-get install chromium)")]


class Watched:
    """A page, with what it logged as errors and every request it made."""

    def __init__(self, page, origin: str):
        self.page = page
        self.origin = origin
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", lambda request: self.requests.append(request.url))
        page.set_default_timeout(WAIT)

    def _console(self, message) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def foreign_requests(self) -> list[str]:
        allowed = (self.origin + "/", self.origin.replace("http", "ws", 1) + "/", "blob:", "data:")
        return [url for url in self.requests if not url.startswith(allowed)]


def jpeg(colour, size=(160, 120)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG", quality=95)
    return out.getvalue()
