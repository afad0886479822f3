"""The ASGI application: routing table, middleware, lifespan. `uvicorn ptgstore.app:app`."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route, WebSocketRoute

from . import errors, guards, metrics, ownkeys, policyfile, serving
from .auth import REDACT_CREDENTIALS, Authenticator, AuthMiddleware, DevPolicyGuard
from .deployment import StartupRefusal, ephemeral_disk_refusal, refusing_app
from .directsend import DirectSend
from .embedded import EmbeddedRedis, recorded_run_id
from .hub import Hub
from .instrumentation import Instrumentation
from .private import private_dir
from .producers import Producers
from .recordings.mcapread import Limits
from .recordings.recorder import Recorder
from .routes import (dashboard, data, docs, foxglove, live, misc, mjpeg, recording_replay, recordings, status, streams,
                     tokens)
from .routing import by_resource
from .settings import Settings, SettingsError
from .store import Store, StoreUnavailable

log = logging.getLogger("ptgstore")

PASSWORD_CHECKS = 2

# every route's description is its handler's docstring (openapi.py, asyncapi.py); the routes of one
# path become one resource, so that a wrong method is answered with all of the path's methods
ROUTES = by_resource([
    Route("/token", tokens.issue_token, methods=["POST"]),
    Route("/token/derive", tokens.derive_token, methods=["POST"]),
    Route("/token/scope", tokens.token_scope, methods=["GET"]),
    Route("/ping", misc.ping, methods=["GET"]),
    Route("/ping/error", misc.ping_error, methods=["GET"]),
    Route("/metrics", metrics.scrape, methods=["GET"]),
    Route("/openapi.json", docs.openapi, methods=["GET"]),
    Route("/asyncapi.json", docs.asyncapi, methods=["GET"]),
    Route("/docs", docs.page, methods=["GET"]),
    Route("/docs/sockets", docs.sockets_page, methods=["GET"]),
    Route("/docs/static/{name}", docs.asset, methods=["GET"]),
    Route("/streams", streams.list_streams, methods=["GET"]),
    Route("/streams/{sid:path}", streams.get_stream, methods=["GET"]),
    Route("/streams/{sid:path}", streams.put_stream, methods=["PUT"]),
    Route("/streams/{sid:path}", streams.delete_streams, methods=["DELETE"]),
    Route("/data/{sid:path}", data.get_entries, methods=["GET"]),
    Route("/data/{sid:path}", data.post_entries, methods=["POST"]),
    WebSocketRoute("/data/{sid:path}/push", live.push),  # plain ASGI apps (see live.Endpoint)
    WebSocketRoute("/data/{sid:path}/pull", live.pull),
    Route("/mjpeg/{sid:path}", mjpeg.stream, methods=["GET"]),
    WebSocketRoute("/foxglove", foxglove.foxglove),
    Route("/status", status.server, methods=["GET"]),
    Route("/status/streams", status.streams, methods=["GET"]),
    Route("/", dashboard.page, methods=["GET"]),
    dashboard.static,
    # recordings: the fixed words first, then a recording id
    Route("/recordings", recordings.list_recordings, methods=["GET"]),
    Route("/recordings/current", recordings.current, methods=["GET"]),
    Route("/recordings/start", recordings.start, methods=["PUT"]),
    Route("/recordings/stop", recordings.stop, methods=["PUT"]),
    Route("/recordings/cache", recordings.clear_cache, methods=["DELETE"]),
    Route("/recordings/static/{rec_id}/{name}", recordings.static_file, methods=["GET"]),
    Route("/recordings/upload/{rec_id}/{name}", recordings.upload, methods=["POST"]),
    WebSocketRoute("/recordings/replay", recording_replay.replay),
    # `recording`: a path segment that is not one of the fixed words above (a wrong method on
    # those is their 405, not a recording named `start`)
    Route("/recordings/{rec_id:recording}/rename/{new_id}", recordings.rename, methods=["PUT"]),
    Route("/recordings/{rec_id:recording}/hide", recordings.hide, methods=["PUT"]),
    Route("/recordings/{rec_id:recording}/unhide", recordings.unhide, methods=["PUT"]),
    Route("/recordings/{rec_id:recording}", recordings.get_recording, methods=["GET"]),
    Route("/recordings/{rec_id:recording}", recordings.delete_recording, methods=["DELETE"]),
])


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    settings: Settings = app.state.settings
    configure_logging(settings.log_level)
    refusal = ephemeral_disk_refusal(settings)
    if refusal is not None:
        raise SettingsError(refusal)  # its one line, printed by the server (StartupRefusal), which exits
    # the data directory (secret, users, embedded Redis, recordings) is this account's only
    await asyncio.to_thread(private_dir, Path(settings.data_dir))
    # the signing secret exists from start-up, so that `ptgstore token` finds the one this server uses
    await asyncio.to_thread(lambda: app.state.authenticator.secret)
    await asyncio.to_thread(policyfile.record, settings)  # ... and mints tokens of this policy
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.data_dir, settings.redis_fsync)
        url = await asyncio.to_thread(embedded.start)
    store = Store(url, key_prefix=settings.key_prefix, default_max_len=settings.max_len,
                  pool_size=settings.redis_pool_size, timeout=settings.redis_timeout,
                  cluster=settings.redis_cluster, group_separator=settings.group_separator)
    if embedded is not None:  # a reconnect checks who answers, as start-up did
        store.connections.expect_run_id(embedded.embedded_run_id)
    elif not settings.redis_cluster and recorded_run_id(settings.data_dir, url) is not None:
        # a worker of `ptgstore serve --workers N`, handed the URL of the embedded Redis its parent runs
        store.connections.expect_run_id(functools.partial(recorded_run_id, settings.data_dir, url))
    await ownkeys.repair(store)  # (before anything reads them: a wrong type would fail the start)
    await migrate_layout(store)
    await share_secret(store, app.state.authenticator.secret)
    store.on_roundtrip = app.state.metrics.redis_roundtrip
    app.state.store = store
    app.state.producers = Producers(store, settings.producer_window, settings.producer_batches)
    app.state.hub = Hub(store, buffer_entries=settings.hub_buffer, buffer_bytes=settings.hub_buffer_bytes)
    log_policy(settings, url, embedded)
    await asyncio.to_thread(private_dir, settings.recordings_path)  # 0700, also when an earlier version made it
    app.state.recorder = Recorder(store, settings.recordings_path, settings.recording_segment_seconds,
                                  settings.recording_segment_mb * 1024 * 1024, settings.recording_shards,
                                  settings.recordings_refusal, limits=Limits.of(settings))
    await app.state.recorder.prove_directory()
    app.state.recorder.start()
    collector = asyncio.get_running_loop().create_task(
        serving.collect_garbage(lambda: len(app.state.metrics.open_socket_stats)))
    try:
        yield
    finally:
        collector.cancel()
        await app.state.recorder.close()
        if getattr(app.state, "foxglove", None) is not None:
            app.state.foxglove.stop()
        await app.state.hub.close()
        await store.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        app.state.metrics.close()


async def migrate_layout(store: Store) -> None:
    """Bring data of an earlier version's key layout into this one's (idempotent): at start-up, so
    that nothing is served from the old layout; a Redis down at start-up is left to the routes."""
    try:
        await store.migrate()
    except StoreUnavailable as exc:
        log.warning("key layout not checked (%s): metadata of an earlier version stays unread "
                    "until a restart with Redis reachable", exc)


async def share_secret(store: Store, secret: str) -> None:
    """Say at start-up when another process on this Redis signs tokens with another secret (its
    tokens would be refused here, and ours there): the fingerprint (an HMAC, not the secret) of
    each process's secret is kept in Redis, the newest process's winning."""
    fingerprint = hmac.new(secret.encode(), b"ptgstore token secret fingerprint", hashlib.sha256).hexdigest()[:16]
    try:
        before = await store.share_fingerprint(fingerprint)
    except StoreUnavailable:
        return
    if before is not None:
        log.error("another ptgstore process on this Redis signs tokens with a different secret (fingerprint "
                  "%s, ours %s): tokens it issued are refused here and ours there; give every process the "
                  "same PTGSTORE_SECRET", before, fingerprint)


def configure_logging(level: str) -> None:
    """Give the ptgstore loggers a handler in uvicorn's style, unless the host application did."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level.upper())
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(REDACT_CREDENTIALS)  # the same filter once, however often called


def log_policy(settings: Settings, url: str, embedded: EmbeddedRedis | None) -> None:
    """Say at start-up which Redis is used and anything that weakens security."""
    if embedded is not None:
        log.info("redis: embedded at %s (data in %s, appendfsync %s)", redact_url(url), embedded.dir,
                 settings.redis_fsync)
    else:
        log.info("redis: %s", redact_url(url))
    if settings.auth == "dev":
        log.warning("auth policy 'dev': ANY username is accepted with a password equal to it "
                    "(set PTGSTORE_AUTH=users for real accounts)%s", "" if settings.auth_explicit else
                    "; requests arriving on a non-loopback address are refused (PTGSTORE_AUTH=dev allows them)")
    else:
        log.info("auth policy 'users': accounts from %s", settings.users_path)
    if settings.secret and len(settings.secret.encode()) < 32:
        log.warning("the configured PTGSTORE_SECRET is shorter than 32 bytes: tokens are easier to forge")
    log.info("hosts: %s", guards.describe_allowed_hosts(settings))
    if settings.metrics_public:
        log.warning("/metrics is public: served to anyone without a token (PTGSTORE_METRICS_PUBLIC=true)")
    if not settings.token_verify_exp:
        log.warning("INSECURE: token expiry is not verified (PTGSTORE_TOKEN_VERIFY_EXP=false)")


def redact_url(url: str) -> str:
    """A Redis URL without its password, for logs."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"


class TrailingSlashMiddleware:
    """Serve `/streams/` and `/streams` alike (no redirects: POST bodies and WebSockets cannot follow one)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if len(path) > 1 and path.endswith("/"):
            scope = dict(scope, path=path.rstrip("/") or "/")
        await self.app(scope, receive, send)


class RootPathMiddleware:
    """Undo uvicorn's `--root-path`, which it prepends to every path: routes and the auth gate see
    paths as clients name them behind the proxy; the prefix is kept for URLs the app writes (docs)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        root = scope.get("root_path", "")
        if root and scope["type"] in ("http", "websocket"):
            path = scope["path"]
            if path == root or path.startswith(root + "/"):
                raw = scope.get("raw_path")
                if raw is not None and raw.startswith(root.encode()):
                    raw = raw[len(root):] or b"/"
                scope = dict(scope, path=path[len(root):] or "/", raw_path=raw, root_path="")
            scope[docs.ROOT_PATH_KEY] = root
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> Starlette:
    """The ptgstore application for `settings` (default: from PTGSTORE_* variables)."""
    settings = settings or Settings.from_env()
    meter = metrics.Metrics(settings)
    middleware = [
        Middleware(DirectSend),  # outermost: socket routes send their data messages past every layer below
        Middleware(StartupRefusal),  # a refused start-up: its one line, not a traceback
        Middleware(RootPathMiddleware),
        Middleware(Instrumentation, metrics=meter, routes=ROUTES, access_log=settings.access_log),
        # guards.py's, in its order: headers on every answer (refusals too), then who may ask
        Middleware(guards.SecurityHeaders),
        Middleware(guards.HostGuard, settings=settings),
        Middleware(guards.LoginGuard, settings=settings),
        Middleware(TrailingSlashMiddleware),
        Middleware(errors.BodyLimitMiddleware, limit=settings.max_message,
                   paths={recordings.UPLOAD_PREFIX: (settings.max_upload, "PTGSTORE_MAX_UPLOAD")}),
    ]
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                                     allow_methods=["*"], allow_headers=["*"], expose_headers=["entry-offset"],
                                     allow_credentials="*" not in settings.cors_origins))
    authenticator = Authenticator(settings)
    if settings.auth == "dev" and not settings.auth_explicit:
        middleware.append(Middleware(DevPolicyGuard))
    middleware.append(Middleware(AuthMiddleware, authenticator=authenticator,
                                 allowed_origins=settings.ws_allowed_origins))
    middleware.append(Middleware(errors.PathGuardMiddleware))
    app = Starlette(routes=ROUTES, middleware=middleware, exception_handlers=errors.EXCEPTION_HANDLERS,
                    lifespan=lifespan)
    app.state.settings = settings
    app.state.authenticator = authenticator
    app.state.metrics = meter
    # scrypt checks at a time (each costs 16 MiB and a core for ~50 ms): more wait their turn
    app.state.password_checks = asyncio.Semaphore(PASSWORD_CHECKS)
    app.router.redirect_slashes = False
    return app


try:
    app = create_app()
except SettingsError as refused:  # `uvicorn ptgstore.app:app` with a malformed PTGSTORE_* variable (the Procfile):
    app = refusing_app(str(refused))  # its one line at start-up, not an import traceback
