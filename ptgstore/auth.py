"""Credentials, tokens, and who is calling (HTTP and WebSocket alike)."""
from __future__ import annotations

import base64
import hashlib
import hmac
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

from .settings import Settings

log = logging.getLogger("ptgstore.auth")

ALGORITHM = "HS256"
VERIFIED_TOKENS = 4096  # tokens remembered as verified, per process
# a short configured secret (such as the original server's) is reported once at start-up,
# not on every token check
if hasattr(jwt, "InsecureKeyLengthWarning"):
    warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class AuthError(Exception):
    """A refused credential or token; `reason` says why in words a person can act on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# -- passwords and the users file ---------------------------------------------------------

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
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# characters whose bytes could become '-' or '_' in base64url, written as JSON escapes instead
_URLSAFE_ESCAPES = {ord(c): f"\\u{ord(c):04x}" for c in ">?~\x7f"}

# a hash checked against when the user is unknown, so both refusals take as long
_DUMMY_HASH = hash_password(secrets.token_hex(8))


def read_users(path: Path) -> dict[str, str]:
    """The users file as {name: password hash}; a missing file means no users."""
    try:
        users = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    if not isinstance(users, dict):
        raise ValueError(f"{path} is not a users file (expected a JSON object)")
    return users


def write_users(path: Path, users: dict[str, str]) -> None:
    """Replace the users file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(users, file, indent=2, sort_keys=True)
    os.replace(tmp, path)


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
    """Who is calling, and how their token arrived (header, query or cookie)."""

    user: str
    source: str


class Authenticator:
    """Checks credentials under the configured policy; issues and verifies tokens."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._secret: str | None = None
        # token -> (user, exp): a signature check costs more than serving a small request
        self._verified: dict[str, tuple[str, float | None]] = {}

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
        stored = read_users(self.settings.users_path).get(username)
        matched = verify_password(password, stored or _DUMMY_HASH)
        return stored is not None and matched

    def issue(self, username: str) -> str:
        """A signed token for `username`.

        A widely used client decodes the header and payload with the standard base64
        alphabet, so neither segment may contain `-` or `_`. In ASCII JSON only the
        characters `>`, `?`, `~` and DEL can encode to those, so they are written as
        JSON escapes (same claims, other bytes).
        """
        now = int(time.time())
        claims = {"sub": username, "iat": now, "exp": now + self.settings.token_ttl}
        payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=True)
        payload = payload.translate(_URLSAFE_ESCAPES).encode()
        token = jwt.api_jws.encode(payload, self.secret, algorithm=ALGORITHM, headers={"typ": "JWT"})
        head, body, _ = token.split(".")
        if "-" in head + body or "_" in head + body:
            raise RuntimeError("minted a token outside the standard base64 alphabet")
        return token

    def verify(self, token: str) -> str:
        """The user a token names; AuthError when it is malformed, expired, or not ours."""
        known = self._verified.get(token)
        if known is not None:
            user, exp = known
            if exp is None or not self.settings.token_verify_exp or exp > time.time():
                return user
            del self._verified[token]
            raise AuthError("token expired")
        user, exp = self._check(token)
        if len(self._verified) >= VERIFIED_TOKENS:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[token] = (user, exp)
        return user

    def _check(self, token: str) -> tuple[str, float | None]:
        """Verify signature and claims: the token's user and expiry time."""
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
        return user, exp if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


def find_token(scope) -> tuple[str | None, str | None]:
    """The token a request carries and where: header, then `token` query, then cookie."""
    headers = {}
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


def origin_allowed(scope, allowed: tuple[str, ...]) -> bool:
    """Whether a cookie-authenticated WebSocket may proceed: no Origin (not a browser),
    the server's own origin, or one configured as allowed."""
    origin = host = None
    for key, value in scope.get("headers", ()):
        if key == b"origin":
            origin = value.decode("latin-1")
        elif key == b"host":
            host = value.decode("latin-1")
    if origin is None:
        return True
    if origin in allowed or "*" in allowed:
        return True
    return urlsplit(origin).netloc.lower() == (host or "").lower()


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

# /metrics decides for itself: open on loopback, a token from elsewhere (metrics.Metrics.may_scrape)
PUBLIC_PATHS = frozenset({"/token", "/ping", "/ping/error", "/docs", "/openapi.json", "/metrics", "/"})
PUBLIC_PREFIXES = ("/docs/", "/static/")  # the dashboard's page and assets: its data calls need a token


class AuthMiddleware:
    """Lets a request through only with a valid token (except public paths).

    REST refusals are 401 with `WWW-Authenticate: Bearer`; a WebSocket is refused
    at the handshake (HTTP 403) before any of its data is read.
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
            if token is None:
                raise AuthError("not authenticated: no token in header, query or cookie")
            user = self.authenticator.verify(token)
            if scope["type"] == "websocket" and source == "cookie" and not origin_allowed(scope, self.allowed_origins):
                raise AuthError("cookie-authenticated WebSocket from an origin that is not allowed")
        except AuthError as exc:
            return await self._refuse(scope, receive, send, exc.reason)
        scope.setdefault("state", {})["caller"] = Caller(user, source)
        return await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope, receive, send, reason: str):
        if scope["type"] == "websocket":
            await receive()  # the websocket.connect event
            await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
            return
        body = json.dumps({"detail": reason}).encode()
        await send({
            "type": "http.response.start", "status": 401,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b"Bearer")],
        })
        await send({"type": "http.response.body", "body": body})
