"""`/`: the dashboard page, and `/static/`: its scripts, styles and the browser client `ptgstore.js`.

The page is served with a content security policy that allows nothing but this server: its own
scripts (no inline ones), images from it or from blob:/data: URLs (previews), and fetches and
WebSockets to the same host.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from ..auth import AuthError, find_token
from .docs import root_path

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_PLACEHOLDER = re.compile(r"\{\{(user|features|root)\}\}")  # one pass: a user name is never read as one
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def content_security_policy(host: str | None) -> str:
    """The page's policy; WebSockets are allowed to the host the page was loaded from only."""
    sockets = f" ws://{host} wss://{host}" if host and _HOST.match(host) else ""
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            f"connect-src 'self'{sockets}; font-src 'self'; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")


def signed_in_user(request: Request) -> str:
    """Who the request's token names ("" when none or invalid): the page then opens on its login form
    instead of probing an API route for a 401."""
    token, _ = find_token(request.scope)
    if token is None:
        return ""
    try:
        return request.app.state.authenticator.verify(token)
    except AuthError:
        return ""


def features(request: Request) -> str:
    """Optional parts of the server the page shows panels for."""
    paths = {getattr(route, "path", "") for route in request.app.routes}
    return "recordings" if any(path.startswith("/recordings") for path in paths) else ""


async def page(request: Request) -> Response:
    """The dashboard page (a login form when not signed in).

    Sent with a content security policy that allows nothing but this server. Its scripts, styles,
    links, fetches and WebSockets go under the root path a proxy serves ptgstore at
    (`PTGSTORE_ROOT_PATH`, or uvicorn's `--root-path`).
    ---
    responses:
      200: {description: the page, content: {text/html: {schema: {type: string}}}}
    """
    values = {"user": signed_in_user(request), "features": features(request), "root": root_path(request)}
    text = _PLACEHOLDER.sub(lambda found: html.escape(values[found[1]], quote=True),
                            (STATIC_DIR / "index.html").read_text())
    return Response(text, media_type="text/html; charset=utf-8", headers={
        "content-security-policy": content_security_policy(request.headers.get("host")),
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "cache-control": "no-cache",
    })


class Assets(StaticFiles):
    """The dashboard's scripts (ES modules, `dashboard.js` importing the others), styles and stand-by
    image, and the browser client `/static/ptgstore.js`.

    Sent with `cache-control: no-cache`: a browser revalidates each file (a 304 through its ETag), so
    that after an upgrade no module is mixed with a cached one of the version before.

    ---
    path:
      path: {type: string, pattern: '^[^\\x00-\\x1f\\x7f-\\x9f]+$', example: ptgstore.js, description: a file name}
    responses:
      200: {description: the file, content: {"*/*": {schema: {type: string, format: binary}}}}
      404: no such file
    """


    async def get_response(self, path: str, scope) -> Response:
        if scope["method"] not in ("GET", "HEAD"):  # StaticFiles' own 405 has no `Allow`
            raise HTTPException(405, headers={"Allow": "GET, HEAD"})
        response = await super().get_response(path, scope)
        response.headers.setdefault("cache-control", "no-cache")
        return response


static = Mount("/static", Assets(directory=STATIC_DIR), name="static")
