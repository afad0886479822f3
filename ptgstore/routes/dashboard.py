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

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
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

    Sent with a content security policy that allows nothing but this server.
    ---
    responses:
      200: {description: the page, content: {text/html: {schema: {type: string}}}}
    """
    text = (STATIC_DIR / "index.html").read_text()
    text = text.replace("{{user}}", html.escape(signed_in_user(request), quote=True))
    text = text.replace("{{features}}", features(request))
    return Response(text, media_type="text/html; charset=utf-8", headers={
        "content-security-policy": content_security_policy(request.headers.get("host")),
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "cache-control": "no-cache",
    })


class Assets(StaticFiles):
    """The dashboard's scripts, styles and stand-by image, and the browser client `/static/ptgstore.js`.

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
        return await super().get_response(path, scope)


static = Mount("/static", Assets(directory=STATIC_DIR), name="static")
