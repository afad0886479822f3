"""What a deployment lacks before it may serve: checked at start-up."""
from __future__ import annotations

import contextlib

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .settings import Settings, SettingsError
from .users import read_users


def ephemeral_disk_problems(settings: Settings) -> list[str]:
    """What a host whose disk vanishes at each restart (PTGSTORE_EPHEMERAL_DISK=true) lacks: a
    generated secret, users added there or an embedded Redis would be lost."""
    problems = []
    if not settings.secret:
        problems.append("PTGSTORE_SECRET (a generated one would change at each restart, ending every token)")
    if settings.redis_url is None:
        problems.append("PTGSTORE_REDIS_URL (the embedded Redis would lose every entry at each restart)")
    if not settings.allowed_hosts:
        problems.append("PTGSTORE_ALLOWED_HOSTS (the name clients reach the app by, e.g. myapp.example.com: "
                        "requests for other names are refused)")
    if settings.auth != "users":
        problems.append("PTGSTORE_AUTH=users (the dev policy accepts anyone)")
    elif not settings.users_file:
        problems.append("PTGSTORE_USERS_FILE (a users file deployed with the app: one made there is lost)")
    else:
        try:
            users = read_users(settings.users_path)
        except (OSError, ValueError) as exc:
            users, reason = {}, str(exc)
        else:
            reason = "it holds no users"
        if not users:
            problems.append(f"PTGSTORE_USERS_FILE={settings.users_file} ({reason}; "
                            f"make it with `PTGSTORE_USERS_FILE={settings.users_file} ptgstore user add NAME` "
                            "and deploy it)")
    return problems



def ephemeral_disk_refusal(settings: Settings) -> str | None:
    """Why this deployment may not start (one line), or None: only an ephemeral disk is checked."""
    problems = ephemeral_disk_problems(settings) if settings.ephemeral_disk else []
    if not problems:
        return None
    return "PTGSTORE_EPHEMERAL_DISK=true (this host's disk is lost at each restart) needs: " + "; ".join(problems)

class StartupRefusal:
    """ASGI middleware: a start-up refused for a reason of the deployment (a `SettingsError` raised in
    the lifespan, such as what an ephemeral disk lacks) fails with that one line as the ASGI
    `lifespan.startup.failed` message, which the server prints before it exits non-zero. Starlette
    sends the traceback as that message, which buries the line under a stack of frames that say
    nothing about what to set. Any other failure keeps its traceback: it is a bug or an outage."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)
        held: list[Message] = []

        async def sending(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # sent once the exception (just below) says which text it gets
            else:
                await send(message)

        try:
            await self.app(scope, receive, sending)
        except SettingsError as exc:
            if not held:
                raise
            await send({**held[0], "message": str(exc)})
            return
        except BaseException:
            for message in held:
                await send(message)
            raise
        for message in held:
            await send(message)


def refusing_app(reason: str) -> Starlette:
    """The app in place of one whose settings are refused at import (`uvicorn ptgstore.app:app` with a
    malformed PTGSTORE_* variable): it fails its start-up with `reason`, one line, and serves nothing."""
    @contextlib.asynccontextmanager
    async def refuse(_app):
        raise SettingsError(reason)
        yield  # (a generator, as a lifespan must be)

    return Starlette(middleware=[Middleware(StartupRefusal)], lifespan=refuse)
