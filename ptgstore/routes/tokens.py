"""`POST /token`: an OAuth2 password form in, a bearer token out (and in a cookie)."""
from __future__ import annotations

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

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
    if not await run_in_threadpool(authenticator.check_credentials, username, password):
        raise HTTPException(401, REFUSED, headers={"WWW-Authenticate": "Bearer"})
    token = authenticator.issue(username)
    ttl = authenticator.settings.token_ttl
    body = {"access_token": token, "token_type": "bearer", "expires_in": ttl}
    response = Response(orjson.dumps(body), media_type="application/json")
    response.set_cookie("authorization", f"Bearer {token}", max_age=ttl, httponly=True, samesite="lax")
    return response
