"""`POST /token`: an OAuth2 password form in, a bearer token out (and in a cookie);
`POST /token/derive`: a narrower token from a token; `GET /token/scope`: what a token may do."""
from __future__ import annotations

import time

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..auth import find_token
from ..permissions import MAX_PATTERNS, Forbidden, Rights, check_patterns
from . import permissions, query_bool

REFUSED = "incorrect username or password"


async def issue_token(request: Request) -> Response:
    """Log in: an OAuth2 password form in, a bearer token out (also set as the `authorization` cookie).

    The cookie's value is `Bearer JWT` (HttpOnly, SameSite=Lax, Max-Age = the token's lifetime).
    A JSON object with the same two fields is taken too.
    ---
    requestBody:
      required: true
      content:
        application/x-www-form-urlencoded:
          schema: {$ref: "#/components/schemas/Credentials"}
        application/json:
          schema: {$ref: "#/components/schemas/Credentials"}
    responses:
      200:
        description: the token
        headers:
          set-cookie: {description: '`authorization="Bearer JWT"; HttpOnly; Max-Age=...; Path=/; SameSite=lax`',
                       schema: {type: string}}
        content:
          application/json:
            schema:
              type: object
              required: [access_token, token_type, expires_in]
              properties:
                access_token: {type: string}
                token_type: {type: string, enum: [bearer]}
                expires_in: {type: integer}
      400: a missing or empty `username`, a missing `password`, a body that is not a form or a JSON object
      401: wrong or unknown credentials (the same answer for both)
      403: a login from another site's page (`Origin` or `Referer` of an origin not allowed; sets no cookie)
      429: too many logins from this address, or from all together (`users` policy); `Retry-After` says when to try again
    """
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            form = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise HTTPException(400, "malformed JSON body") from None
        if not isinstance(form, dict):
            raise HTTPException(400, "body must be a JSON object with username and password")
    else:
        form = await request.form(max_files=0, max_fields=16)
    username, password = form.get("username"), form.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise HTTPException(400, "username and password form fields are required")
    authenticator = request.app.state.authenticator
    async with request.app.state.password_checks:  # bounded: each scrypt check takes 16 MiB and a core
        accepted = await run_in_threadpool(authenticator.check_credentials, username, password)
    if not accepted:
        raise HTTPException(401, REFUSED, headers={"WWW-Authenticate": "Bearer"})
    token = authenticator.issue(username)
    ttl = authenticator.settings.token_ttl
    body = {"access_token": token, "token_type": "bearer", "expires_in": ttl}
    response = Response(orjson.dumps(body), media_type="application/json")
    response.set_cookie("authorization", f"Bearer {token}", max_age=ttl, httponly=True, samesite="lax",
                        secure=request.url.scheme == "https")  # (the scheme after uvicorn's proxy headers)
    return response


async def _form(request: Request) -> dict[str, list]:
    """The body's fields as lists (a form's repeated fields, or a JSON object's values)."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise HTTPException(400, "malformed JSON body") from None
        if not isinstance(body, dict):
            raise HTTPException(400, "body must be a JSON object")
        return {key: value if isinstance(value, list) else [value] for key, value in body.items()}
    form = await request.form(max_files=0, max_fields=2 * MAX_PATTERNS + 4)
    return {key: form.getlist(key) for key in form.keys()}


def _ttl(values: list, most: int) -> int:
    if not values:
        return most
    raw = values[-1]
    text = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if not isinstance(text, str) or not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise HTTPException(400, f"ttl must be a whole number of seconds, at least 1, not {raw!r}")
    if int(text) > most:
        raise Forbidden(f"forbidden: ttl {int(text)} s is longer than this token may give ({most} s)")
    return int(text)


async def derive_token(request: Request) -> Response:
    """A new token for the caller's own user, narrower than the token that asks.

    Form fields (or a JSON object): `read` and `write` (repeatable stream-id patterns), `admin`
    (true/false, default false) and `ttl` (seconds, default: as long as the calling token lives,
    at most PTGSTORE_TOKEN_TTL). Every pattern asked for must be covered by the caller's
    (permissions.Layer.covers), and the ttl must end no later than the calling token: asking for
    more is 403 with the reason; a malformed pattern or ttl is 400. No cookie is set.
    ---
    requestBody:
      required: true
      content:
        application/x-www-form-urlencoded: {schema: {$ref: "#/components/schemas/Derive"}}
        application/json: {schema: {$ref: "#/components/schemas/Derive"}}
    raises: [BadPatterns, Forbidden]
    responses:
      200:
        description: the narrower token
        content:
          application/json:
            schema:
              type: object
              required: [access_token, token_type, expires_in, scope]
              properties:
                access_token: {type: string}
                token_type: {type: string, enum: [bearer]}
                expires_in: {type: integer}
                scope: {type: object}
      400: "nothing asked for, an unknown field, a malformed ttl, a scope claim over 2048 bytes of JSON"
    """
    authenticator = request.app.state.authenticator
    token, _ = find_token(request.scope)
    claims = authenticator.claims(token)
    caller = permissions(request)
    fields = await _form(request)
    unknown = set(fields) - {"read", "write", "admin", "ttl"}
    if unknown:
        raise HTTPException(400, f"unknown field {sorted(unknown)[0]!r}: read, write, admin and ttl are known")
    admin = fields.get("admin", [False])[-1]
    if not isinstance(admin, bool):
        admin = query_bool({"admin": str(admin)}, "admin")
    wanted = Rights(check_patterns(fields.get("read", []), "read patterns"),
                    check_patterns(fields.get("write", []), "write patterns"), admin).claimable()
    if not (wanted.read or wanted.write or wanted.admin):
        raise HTTPException(400, "ask for at least one read or write pattern, or admin=true")
    caller.narrowed(wanted)
    now = int(time.time())
    most = authenticator.settings.token_ttl
    if claims.exp is not None and authenticator.settings.token_verify_exp:
        most = min(most, int(claims.exp) - now)
    if most < 1:
        raise Forbidden("forbidden: the calling token expires within a second")
    ttl = _ttl(fields.get("ttl", []), most)
    derived = authenticator.issue(claims.user, wanted, ttl)
    body = {"access_token": derived, "token_type": "bearer", "expires_in": ttl, "scope": wanted.as_claim()}
    return Response(orjson.dumps(body), media_type="application/json")


async def token_scope(request: Request) -> Response:
    """Who the caller is and what their token may do now (`read` and `write` patterns, `admin`).

    And when it expires (epoch seconds, or null).
    ---
    responses:
      200:
        description: the scope
        content:
          application/json:
            schema:
              type: object
              required: [user, read, write, admin, expires]
              properties:
                user: {type: string}
                read: {type: array, items: {type: string}}
                write: {type: array, items: {type: string}}
                admin: {type: boolean}
                expires: {type: integer, nullable: true}
    """
    token, _ = find_token(request.scope)
    claims = request.app.state.authenticator.claims(token)
    body = {"user": claims.user, **permissions(request).describe(), "expires": claims.exp}
    return Response(orjson.dumps(body), media_type="application/json", headers={"cache-control": "no-store"})
