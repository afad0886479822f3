"""Request guards that stand in front of every route, in the order the middleware stack applies them.

1. `SecurityHeaders`: every response says `nosniff`; an HTML response without a policy of its own
   (`/static/index.html`) gets the dashboard's content security policy and may not be framed.
2. `HostGuard`: the `Host` header must name this server (DNS rebinding): loopback names, the
   address the request arrived on, the configured bind address, and `PTGSTORE_ALLOWED_HOSTS`.
3. `LoginGuard`: `POST /token` only from the server's own origin or an allowed one (login CSRF),
   and under the `users` policy at most `PTGSTORE_LOGIN_RATE` password checks per client a minute.

Then, further in: `errors.BodyLimitMiddleware`, CORS, `auth.DevPolicyGuard`, `auth.AuthMiddleware`,
`errors.PathGuardMiddleware` (see `app.create_app`).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import math
import socket

from .auth import request_origin_allowed
from .ratelimit import RateLimiter
from .routes.dashboard import content_security_policy
from .settings import Settings

log = logging.getLogger("ptgstore.guards")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
LOGGED_HOSTS = 64  # refused Host names logged once each, at most this many per process


async def deny(scope, receive, send, status: int, reason: str, headers: tuple = ()) -> None:
    """Refuse a request, or a WebSocket at its handshake (the ASGI denial response, so the client
    reads the status and the reason), with `{"detail": reason}`."""
    body = json.dumps({"detail": reason}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    if scope["type"] == "websocket":
        await receive()  # the websocket.connect event
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": status, "headers": head})
            await send({"type": "websocket.http.response.body", "body": body})
        else:  # a server without the extension answers a bare 403
            await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
        return
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


# -- 1. headers every response carries ---------------------------------------------------------

class SecurityHeaders:
    """`X-Content-Type-Options: nosniff` on every HTTP response; on an HTML response that has no
    policy of its own, the dashboard's `Content-Security-Policy` and `X-Frame-Options: DENY`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {name.lower() for name, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
                if content_type.lower().startswith(b"text/html"):
                    if b"content-security-policy" not in names:
                        policy = content_security_policy(header(scope, b"host"))
                        headers.append((b"content-security-policy", policy.encode()))
                    if b"x-frame-options" not in names:
                        headers.append((b"x-frame-options", b"DENY"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- 2. the Host allow-list ---------------------------------------------------------------------

def split_host(value: str, pattern: bool = False) -> tuple[str, int | None] | None:
    """A Host header (or with `pattern` an allow-list entry, which may start with `*.`) as (lower-case
    name without brackets, port or None); None when it is not a host name or address."""
    value = value.strip().lower()
    port: int | None = None
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, colon, port_text_ = value.partition(":")
        port_text = port_text_ if colon else None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
            return None
        port = int(port_text)
    name = name.rstrip(".")
    if pattern and name.startswith("*."):
        head, name = "*.", name[2:]
    else:
        head = ""
    if not name or not all(c.isascii() and (c.isalnum() or c in ".-_:") for c in name):
        return None
    return head + name, port


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback_name(name: str) -> bool:
    """localhost, *.localhost (RFC 6761: never resolved elsewhere) and loopback addresses."""
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    address = _address(name)
    return address is not None and address.is_loopback


def machine_names() -> set[str]:
    """This machine's own host name, and its mDNS name (`name.local`): headsets on a lab network
    reach the server by them, and a hostile page cannot make them its own origin's name."""
    name = socket.gethostname().lower().rstrip(".")
    if not name or split_host(name) is None:
        return set()
    short = name.split(".")[0]
    return {name, short, short + ".local"}


class HostGuard:
    """Refuse (400) requests and WebSocket handshakes whose `Host` does not name this server.

    A page of another site can make a browser send requests to this server under the site's own
    name (DNS rebinding: the name is made to resolve to 127.0.0.1); the origin checks that compare
    `Origin` with `Host` then see a same-origin request. Served: no Host at all (not a browser),
    loopback names, the local address the request arrived on (a browser asked for that address
    itself), the configured bind address when it is not a wildcard, this machine's host name (and
    `name.local`), and PTGSTORE_ALLOWED_HOSTS
    (`name`, `name:port`, `*.domain`, or `*`: every Host)."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.any = False
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.with_port: set[tuple[str, int]] = set()
        for entry in settings.allowed_hosts:
            if entry == "*":
                self.any = True
                continue
            parsed = split_host(entry, pattern=True)
            if parsed is None:
                log.error("PTGSTORE_ALLOWED_HOSTS: %r is not a host name: ignored", entry)
                continue
            name, port = parsed
            if name.startswith("*."):
                self.suffixes.append(name[1:])
            elif port is None:
                self.names.add(name)
            else:
                self.with_port.add((name, port))
        bound = settings.host.strip("[]").lower().rstrip(".")
        if bound not in WILDCARD_ADDRESSES:
            self.names.add(bound)
        self.names |= machine_names()
        self.logged: set[str] = set()

    def allows(self, scope) -> bool:
        if self.any:
            return True
        value = header(scope, b"host")
        if value is None:
            return True
        parsed = split_host(value)
        if parsed is None:
            return False
        name, port = parsed
        if name in self.names or is_loopback_name(name) or any(name.endswith(s) for s in self.suffixes):
            return True
        if self.with_port:
            effective = port if port is not None else DEFAULT_PORTS.get(scope.get("scheme", "http"), 80)
            if (name, effective) in self.with_port:
                return True
        server = scope.get("server")
        if server:
            local, asked = _address(str(server[0]).strip("[]")), _address(name)
            if asked is not None and asked == local:
                return True
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self.allows(scope):
            return await self.app(scope, receive, send)
        shown = (header(scope, b"host") or "")[:100]
        if shown not in self.logged and len(self.logged) < LOGGED_HOSTS:
            self.logged.add(shown)
            log.warning("refused requests for Host %r (not a name of this server: DNS rebinding guard); if "
                        "clients reach this server by that name, add it to PTGSTORE_ALLOWED_HOSTS", shown)
        await deny(scope, receive, send, 400, f"Host {shown!r} is not served here (PTGSTORE_ALLOWED_HOSTS)")


def describe_allowed_hosts(settings: Settings) -> str:
    """The allow-list in words, for the start-up log."""
    if "*" in settings.allowed_hosts:
        return "any Host header is served (PTGSTORE_ALLOWED_HOSTS=*): DNS rebinding is not guarded against"
    extra = ", ".join(settings.allowed_hosts)
    return ("requests are served for Host: localhost, loopback addresses, the address they arrive on, "
            + "/".join(sorted(machine_names(), key=len))
            + (f", {settings.host}" if settings.host.strip("[]") not in WILDCARD_ADDRESSES else "")
            + (f", and {extra} (PTGSTORE_ALLOWED_HOSTS)" if extra else
               "; behind a proxy or under a DNS name set PTGSTORE_ALLOWED_HOSTS to that name"))


# -- 3. logging in ---------------------------------------------------------------------------------

LOGIN_PATH = "/token"
# all clients together may make this many times one client's logins: uvicorn trusts X-Forwarded-For
# from 127.0.0.1 by default, so a local client can claim a new address with every attempt
OVERALL_LOGINS = 10


class LoginGuard:
    """`POST /token` sets the login cookie: a page of another site must not log the browser in as
    someone else (login CSRF), so a form posted from another origin is refused (403) like any other
    cookie-carrying state change. Under the `users` policy each attempt costs an scrypt check: a
    client address may make `login_rate` a minute, all of them together OVERALL_LOGINS times that
    (429 with Retry-After beyond)."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.allowed_origins = settings.ws_allowed_origins + tuple(o for o in settings.cors_origins if o != "*")
        users = settings.auth == "users"
        self.limiter = RateLimiter(settings.login_rate, 60.0) if users else None
        self.overall = RateLimiter(settings.login_rate * OVERALL_LOGINS, 60.0) if users else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != LOGIN_PATH or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if not request_origin_allowed(scope, self.allowed_origins):
            return await deny(scope, receive, send, 403, "cross-site login refused: POST /token from an origin "
                              "that is not allowed")
        if self.limiter is not None and self.overall is not None:
            client = scope.get("client")
            wait = self.limiter.take(str(client[0]) if client else "") or self.overall.take("")
            if wait > 0:
                seconds = max(1, math.ceil(wait))
                return await deny(scope, receive, send, 429,
                                  f"too many login attempts: try again in {seconds} s",
                                  ((b"retry-after", str(seconds).encode()),))
        await self.app(scope, receive, send)
