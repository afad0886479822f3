"""`POST /token`: an OAuth2 password form in, a bearer token out (and in a cookie)."""
from __future__ import annotations

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

REFUSED = "incorrect username or password"


async def issue_token(request: Request) -> Response:
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
        raise HTTPException(422, "username and password form fields are required")
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
