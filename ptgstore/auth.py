"""Credentials, tokens, and who is calling (HTTP and WebSocket alike)."""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt

from .permissions import EVERYTHING, FULL_RIGHTS, NO_RIGHTS, NOTHING, BadPatterns, Rights, Scope, account_rights
from .settings import Settings
from .users import (  # noqa: F401 - hash_password and verify_password were imported from here
    DUMMY_HASH, hash_password, password_generation, password_of, read_users, verify_password, write_users,
)

log = logging.getLogger("ptgstore.auth")

ALGORITHM = "HS256"
VERIFIED_TOKENS = 4096  # tokens remembered as verified, per process
# a short configured secret (such as the original server's) is reported once at start-up,
# not on every token check
if hasattr(jwt, "InsecureKeyLengthWarning"):
    warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)


class AuthError(Exception):
    """A refused credential or token; `reason` says why in words a person can act on, `status` is
    401 (no acceptable credential) or 403 (a credential, but not from here)."""

    def __init__(self, reason: str, status: int = 401):
        super().__init__(reason)
        self.reason = reason
        self.status = status


# characters whose bytes could become '-' or '_' in base64url, written as JSON escapes instead
_URLSAFE_ESCAPES = {ord(c): f"\\u{ord(c):04x}" for c in ">?~\x7f"}


def load_or_create_secret(settings: Settings) -> str:
    """The configured signing secret, else one generated once and kept in the data directory."""
    if settings.secret:
        return settings.secret
    path = Path(settings.data_dir) / "secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # written aside, then linked into place: a concurrent reader (another worker or thread)
        # never sees the file empty, which would make it sign and check with an empty key
        tmp = path.with_name(f"secret.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)
            log.info("generated a token signing secret in %s", path)
        except FileExistsError:
            pass  # someone else's secret won the race; use theirs
        finally:
            os.unlink(tmp)
    secret = path.read_text().strip()
    if not secret:
        raise RuntimeError(f"the token signing secret in {path} is empty: delete it to generate a new one")
    return secret


# -- tokens ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Caller:
    """Who is calling, how their token arrived (header, query or cookie), and what they may do."""

    user: str
    source: str
    permissions: Scope = NOTHING


@dataclass(frozen=True)
class Claims:
    """What a verified token says: its user, expiry, policy, password generation and scope (None:
    the account's own permissions, whatever they are at each request)."""

    user: str
    exp: float | None
    policy: str | None
    generation: str | None
    scope: Rights | None


class Authenticator:
    """Checks credentials under the configured policy; issues and verifies tokens."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._secret: str | None = None
        # a signature check costs more than serving a small request: verified claims are kept;
        # whether the account still stands is checked at every request (_admit)
        self._verified: dict[str, Claims] = {}
        # token -> (rights version, Scope): compiled once per token and users file
        self._scopes: dict[str, tuple[int, Scope]] = {}
        self._users: dict = {}
        self._users_key: tuple | None = None
        self._users_file = str(settings.users_path)
        self._generations: dict[str, str] = {}
        self._rights: dict[str, Rights] = {}
        self._rights_version = 0

    @property
    def secret(self) -> str:
        # read (or generated) on first use, not when the module is imported
        if self._secret is None:
            self._secret = load_or_create_secret(self.settings)
        return self._secret

    def check_credentials(self, username: str, password: str) -> bool:
        """Whether the pair is accepted by the policy (slow on purpose under `users`: run off the loop)."""
        if self.settings.auth == "dev":
            return bool(username) and hmac.compare_digest(username.encode(), password.encode())
        stored = password_of(read_users(self.settings.users_path).get(username))
        matched = verify_password(password, stored or DUMMY_HASH)
        return stored is not None and matched

    def issue(self, username: str, scope: Rights | None = None, ttl: int | None = None) -> str:
        """A signed token for `username`, limited to `scope` when given, living `ttl` seconds
        (default PTGSTORE_TOKEN_TTL).

        A widely used client decodes the header and payload with the standard base64
        alphabet, so neither segment may contain `-` or `_`. In ASCII JSON only the
        characters `>`, `?`, `~` and DEL can encode to those, so they are written as
        JSON escapes (same claims, other bytes).
        """
        now = int(time.time())
        claims: dict = {"sub": username, "iat": now, "exp": now + (self.settings.token_ttl if ttl is None else ttl),
                        "pol": self.settings.auth}
        if self.settings.auth == "users":
            stored = password_of(self.current_users().get(username))
            if stored is not None:
                claims["gen"] = password_generation(stored)
        if scope is not None:
            claims["scope"] = scope.as_claim()
        text = json.dumps(claims, separators=(",", ":"), ensure_ascii=True)
        payload = text.translate(_URLSAFE_ESCAPES).encode()
        token = jwt.api_jws.encode(payload, self.secret, algorithm=ALGORITHM, headers={"typ": "JWT"})
        head, body, _ = token.split(".")
        if "-" in head + body or "_" in head + body:
            raise RuntimeError("minted a token outside the standard base64 alphabet")
        return token

    def verify(self, token: str) -> str:
        """The user a token names; AuthError when it is malformed, expired, not ours, or its account
        no longer stands (policy changed, user removed, password changed)."""
        return self.claims(token).user

    def claims(self, token: str) -> Claims:
        """The verified claims of a token whose account still stands (else AuthError, as `verify`)."""
        known = self._verified.get(token)
        if known is not None:
            if known.exp is not None and self.settings.token_verify_exp and known.exp <= time.time():
                del self._verified[token]
                raise AuthError("token expired")
        else:
            known = self._check(token)
            if len(self._verified) >= VERIFIED_TOKENS:
                oldest = next(iter(self._verified))  # the oldest
                del self._verified[oldest]
                self._scopes.pop(oldest, None)
            self._verified[token] = known
        self._admit(known.user, known.policy, known.generation)
        return known

    def scope(self, token: str, claims: Claims) -> Scope:
        """What the token may do now: its own scope claim intersected with its account's
        permissions in the users file as it is now (all permissions under the dev policy)."""
        if self.settings.auth == "users":
            self.current_users()
        cached = self._scopes.get(token)
        if cached is not None and cached[0] == self._rights_version:
            return cached[1]
        account = self._rights.get(claims.user, FULL_RIGHTS) if self.settings.auth == "users" else FULL_RIGHTS
        rights = [r for r in (claims.scope, account) if r is not None and not r.full]
        scope = Scope.of(*rights) if rights else EVERYTHING
        if len(self._scopes) >= VERIFIED_TOKENS:
            del self._scopes[next(iter(self._scopes))]
        self._scopes[token] = (self._rights_version, scope)
        return scope

    def _admit(self, user: str, policy: str | None, generation: str | None) -> None:
        """Refuse a well-signed token whose account no longer stands. Tokens without a `pol` claim
        (minted before it existed, or by the original server) are judged by the user alone."""
        if policy is not None and policy != self.settings.auth:
            raise AuthError(f"token issued under the {policy!r} policy, which is no longer in force: log in again")
        if self.settings.auth != "users":
            return
        if user not in self.current_users():
            raise AuthError("token of a user that no longer exists")
        if policy is not None and generation != self._generations.get(user):
            raise AuthError("token issued before the user's password changed: log in again")

    def current_users(self) -> dict:
        """The users file, read again only when it changed (one stat per call)."""
        key: tuple | None
        try:
            st = os.stat(self._users_file)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        except OSError as exc:  # unreadable: read_users below says why, once
            key = ("unreadable", exc.errno)
        if key != self._users_key:
            path = self.settings.users_path
            try:
                users = read_users(path)
            except (OSError, ValueError) as exc:
                log.error("cannot read the users file %s (%s): every token is refused until it is fixed", path, exc)
                users = {}
            self._users, self._users_key = users, key
            self._generations = {name: password_generation(stored) for name, stored in
                                 ((name, password_of(record)) for name, record in users.items()) if stored}
            self._rights = {name: self._account_rights(path, name, record) for name, record in users.items()}
            self._rights_version += 1
        return self._users

    @staticmethod
    def _account_rights(path, name: str, record) -> Rights:
        try:
            return account_rights(record)
        except BadPatterns as exc:
            log.error("users file %s: the permissions of %r are malformed (%s): they allow nothing until fixed",
                      path, name, exc)
            return NO_RIGHTS

    def _check(self, token: str) -> Claims:
        """Verify signature and claims."""
        try:
            claims = jwt.decode(
                token, self.secret, algorithms=[ALGORITHM],
                options={"verify_exp": self.settings.token_verify_exp, "require": ["sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature does not match") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("token algorithm not accepted") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        user = claims.get("sub")
        if not isinstance(user, str) or not user:
            raise AuthError("invalid token: no subject")
        exp = claims.get("exp")
        policy, generation = claims.get("pol"), claims.get("gen")
        if not all(value is None or isinstance(value, str) for value in (policy, generation)):
            raise AuthError("invalid token: malformed pol or gen claim")
        scope = claims.get("scope")
        if scope is not None:
            try:
                if not isinstance(scope, dict):
                    raise BadPatterns("not an object")
                scope = Rights.from_record(scope)
            except BadPatterns as exc:
                raise AuthError(f"invalid token: malformed scope claim ({exc})") from None
        return Claims(user, exp if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None,
                      policy, generation, scope)


def find_token(scope) -> tuple[str | None, str | None]:
    """The token a request carries and where: header, then `token` query, then cookie."""
    headers: dict[bytes, str] = {}
    for key, value in scope.get("headers", ()):
        if key in (b"authorization", b"cookie", b"origin"):
            headers.setdefault(key, value.decode("latin-1"))
    header = headers.get(b"authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), "header"
    query = scope.get("query_string", b"").decode("latin-1")
    if "token=" in query:
        values = parse_qs(query).get("token")
        if values and values[0]:
            return values[0], "query"
    # parsed by hand: clients send `Bearer <jwt>` unquoted, which a strict cookie parser drops
    for part in headers.get(b"cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name != "authorization":
            continue
        value = value.strip().strip('"').strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        if value:
            return value, "cookie"
    return None, None


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _same_or_allowed(origin: str, scope, allowed: tuple[str, ...]) -> bool:
    """Whether `origin` (scheme://host[:port]) is the server's own (its Host) or configured as allowed."""
    if origin in allowed or "*" in allowed:
        return True
    parts = urlsplit(origin)
    host = _header(scope, b"host") or ""
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc.lower() == host.lower()


def origin_allowed(scope, allowed: tuple[str, ...]) -> bool:
    """Whether a cookie-authenticated WebSocket may proceed: no Origin (not a browser),
    the server's own origin, or one configured as allowed."""
    origin = _header(scope, b"origin")
    return origin is None or _same_or_allowed(origin, scope, allowed)


def request_origin_allowed(scope, allowed: tuple[str, ...]) -> bool:
    """Whether a cookie-authenticated state-changing request may proceed (CSRF): its Origin, or
    without one the origin of its Referer, is the server's own or allowed. A request with neither
    is not a browser's (browsers send Origin with every POST, PUT, DELETE and PATCH): scripts that
    keep the cookie in a jar, as a widely used client does, go on working."""
    origin = _header(scope, b"origin")
    if origin is None:
        referer = _header(scope, b"referer")
        if referer is None:
            return True
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    return _same_or_allowed(origin, scope, allowed)


# -- keeping tokens out of the log ---------------------------------------------------------------

_QUERY_TOKEN = re.compile(r"([?&]token=)[^&\s\"']+")
_CREDENTIAL_HEADER = re.compile(r"^([<>]? ?(?:authorization|cookie|set-cookie): ).*$", re.IGNORECASE | re.MULTILINE)


class CredentialRedactor(logging.Filter):
    """Blanks tokens in log records of the server underneath: uvicorn logs every WebSocket
    handshake's path with its query string (where browsers and headsets carry `token=`),
    and at debug level the WebSocket library logs the handshake's headers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message or ": " in message:
            redacted = _CREDENTIAL_HEADER.sub(r"\1***", _QUERY_TOKEN.sub(r"\1***", message))
            if redacted != message:
                record.msg, record.args = redacted, ()
        return True


REDACT_CREDENTIALS = CredentialRedactor()


# -- the gate in front of every route -------------------------------------------------------

# /metrics decides for itself: a metrics token or an API token, or public when configured
# (metrics.Metrics.may_scrape)
PUBLIC_PATHS = frozenset({"/token", "/ping", "/ping/error", "/docs", "/openapi.json", "/asyncapi.json", "/metrics", "/"})
PUBLIC_PREFIXES = ("/docs/", "/static/")  # the dashboard's page and assets: its data calls need a token
STATE_CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})


class AuthMiddleware:
    """Lets a request through only with a valid token (except public paths).

    Refusals are 401 with `WWW-Authenticate: Bearer` (no acceptable token) or 403 (a cookie
    sent from another site's page), with `{"detail": reason}`; a WebSocket gets the same answer
    at the handshake (ASGI denial response), before any of its data is read.
    """

    def __init__(self, app, authenticator: Authenticator, allowed_origins: tuple[str, ...] = ()):
        self.app = app
        self.authenticator = authenticator
        self.allowed_origins = allowed_origins

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return await self.app(scope, receive, send)
        token, source = find_token(scope)
        try:
            if token is None or source is None:  # (both or neither)
                raise AuthError("not authenticated: no token in header, query or cookie")
            claims = self.authenticator.claims(token)
            if source == "cookie":
                self._check_origin(scope)
        except AuthError as exc:
            return await self._refuse(scope, receive, send, exc)
        permissions = self.authenticator.scope(token, claims)
        scope.setdefault("state", {})["caller"] = Caller(claims.user, source, permissions)
        return await self.app(scope, receive, send)

    def _check_origin(self, scope) -> None:
        """A cookie travels with requests that other sites' pages make: those change nothing."""
        if scope["type"] == "websocket":
            if not origin_allowed(scope, self.allowed_origins):
                raise AuthError("cookie-authenticated WebSocket from an origin that is not allowed", 403)
        elif scope["method"] in STATE_CHANGING and not request_origin_allowed(scope, self.allowed_origins):
            raise AuthError(f"cross-site request refused: {scope['method']} authenticated by the cookie alone "
                            "from an origin that is not allowed (send the token in the Authorization header)", 403)

    @staticmethod
    async def _refuse(scope, receive, send, error: AuthError):
        body = json.dumps({"detail": error.reason}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if error.status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        if scope["type"] == "websocket":
            await receive()  # the websocket.connect event
            if "websocket.http.response" in scope.get("extensions", {}):
                # the ASGI denial response: the client reads the status and the reason
                await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
                await send({"type": "websocket.http.response.body", "body": body})
            else:
                # a server without the extension answers a bare 403
                await send({"type": "websocket.close", "code": 1008, "reason": error.reason[:120]})
            return
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# -- the dev policy stays on this machine -----------------------------------------------------

DEV_POLICY_NOT_PUBLIC = ("the 'dev' auth policy (any username, password = username) is not served on a public "
                         "address: set PTGSTORE_AUTH=users, or PTGSTORE_AUTH=dev to accept the risk")


def is_loopback_address(server) -> bool:
    """Whether the local address a request arrived on (ASGI `server`) is loopback; a unix socket
    (no IP address) counts as local."""
    if not server:
        return True
    try:
        address = ipaddress.ip_address(str(server[0]).strip("[]"))
    except ValueError:
        return True
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class DevPolicyGuard:
    """Refuse (403) every request and handshake that arrives on a non-loopback address while the
    `dev` policy is in force by default, whatever server runs the app (`ptgstore serve` refuses to
    start instead; under `uvicorn --host 0.0.0.0` the app cannot see the bound address, only the one
    each request arrived on). An explicit PTGSTORE_AUTH=dev lifts it; then this is not installed."""

    def __init__(self, app):
        self.app = app
        self.verdicts: dict = {}  # local address -> loopback or not (a server has few)
        self.logged = False

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        server = scope.get("server")
        key = tuple(server) if server else None
        local = self.verdicts.get(key)
        if local is None:
            local = self.verdicts[key] = is_loopback_address(server)
            if not local and not self.logged:
                self.logged = True
                log.error("refusing requests on %s: %s", server[0], DEV_POLICY_NOT_PUBLIC)
        if local:
            return await self.app(scope, receive, send)
        return await AuthMiddleware._refuse(scope, receive, send, AuthError(DEV_POLICY_NOT_PUBLIC, 403))
