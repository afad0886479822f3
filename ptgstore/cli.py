"""`ptgstore serve | token | user`: run the server and manage who may use it;
`ptgstore streams | push | pull | dump | load | simulate`: use it as a client."""
from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import shutil
import sys
import tempfile

from .settings import Settings, SettingsError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _settings(args) -> Settings:
    return Settings.from_env(
        redis_url=getattr(args, "redis_url", None), host=getattr(args, "host", None),
        port=getattr(args, "port", None), workers=getattr(args, "workers", None),
        data_dir=getattr(args, "data_dir", None), auth=getattr(args, "auth", None),
        log_level=getattr(args, "log_level", None),
    )


# which settings the server processes must see, as the environment they read
_ENV_OF = {"redis_url": "REDIS_URL", "data_dir": "DATA_DIR", "auth": "AUTH", "log_level": "LOG_LEVEL",
           "metrics_dir": "METRICS_DIR"}


def _fresh_metrics_dir(settings: Settings) -> tuple[Settings, str | None]:
    """Workers share their metrics through files in one directory, emptied at each start
    (stale files from an earlier run would be summed in). Returns the settings and a
    scratch directory to remove at exit, if one was made."""
    scratch = None
    if not settings.metrics_dir:
        if settings.workers == 1:
            return settings, None
        scratch = tempfile.mkdtemp(prefix="ptgstore-metrics-")
        settings = settings.replace(metrics_dir=scratch)
    os.makedirs(settings.metrics_dir, exist_ok=True)
    for name in os.listdir(settings.metrics_dir):
        if name.endswith(".db"):
            os.unlink(os.path.join(settings.metrics_dir, name))
    return settings, scratch


def serve(args) -> int:
    """Start uvicorn on the app with the configured host, port, workers and reload."""
    import uvicorn  # noqa: PLC0415 - only the serve command needs it

    from .embedded import EmbeddedRedis  # noqa: PLC0415

    settings = _settings(args)
    if settings.auth == "dev" and not _is_loopback(settings.host) and not settings.auth_explicit:
        print(f"refusing to serve the 'dev' auth policy (any user, password = name) on {settings.host}: "
              "set PTGSTORE_AUTH=users (see `ptgstore user add`), or PTGSTORE_AUTH=dev to accept the risk",
              file=sys.stderr)
        return 2
    embedded = None
    if settings.embedded and (settings.workers > 1 or args.reload):
        # several processes share one private Redis, started here and stopped last
        embedded = EmbeddedRedis(settings.data_dir, settings.redis_fsync)
        settings = settings.replace(redis_url=embedded.start())
    settings, metrics_scratch = _fresh_metrics_dir(settings)
    for attr, suffix in _ENV_OF.items():
        value = getattr(settings, attr)
        if value is not None and (attr != "auth" or settings.auth_explicit):
            os.environ["PTGSTORE_" + suffix] = str(value)
    redis_text = "embedded (private redis-server, data in %s)" % os.path.join(settings.data_dir, "redis") \
        if settings.embedded or embedded else settings.redis_url
    print(f"ptgstore: listening on http://{settings.host}:{settings.port} "
          f"({settings.workers} worker{'s' if settings.workers > 1 else ''})\n"
          f"ptgstore: redis {redis_text}\n"
          f"ptgstore: auth policy '{settings.auth}'"
          + (" - any username with password equal to it; get a token with `ptgstore token`"
             if settings.auth == "dev" else f" - accounts in {settings.users_path}"), flush=True)
    try:
        uvicorn.run(
            "ptgstore.app:app", host=settings.host, port=settings.port, workers=settings.workers,
            reload=args.reload, log_level=settings.log_level, ws="ptgstore.graceful:GracefulWebSocketProtocol",
            ws_per_message_deflate=False, ws_max_size=settings.max_message, timeout_graceful_shutdown=10,
            access_log=False,  # ptgstore.access logs each request and socket, with route, user and duration
        )
    finally:
        if embedded is not None:
            embedded.stop()
        if metrics_scratch is not None:
            shutil.rmtree(metrics_scratch, ignore_errors=True)
    return 0


def token(args) -> int:
    """Print a fresh token signed with this server's secret."""
    from .auth import Authenticator  # noqa: PLC0415

    settings = _settings(args)
    print(Authenticator(settings).issue(args.user or getpass.getuser()))
    return 0


def user(args) -> int:
    """Add, remove or list accounts of the `users` policy."""
    from .auth import hash_password, read_users, write_users  # noqa: PLC0415

    path = _settings(args).users_path
    users = read_users(path)
    if args.action == "list":
        print("\n".join(sorted(users)) if users else f"no users in {path}")
        return 0
    if not args.name:
        print("a user name is needed", file=sys.stderr)
        return 2
    if args.action == "remove":
        if users.pop(args.name, None) is None:
            print(f"no user {args.name!r} in {path}", file=sys.stderr)
            return 1
        write_users(path, users)
        print(f"removed {args.name} from {path}")
        return 0
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            print("the passwords differ", file=sys.stderr)
            return 1
    if not password:
        print("an empty password is not allowed", file=sys.stderr)
        return 1
    existed = args.name in users
    users[args.name] = hash_password(password)
    write_users(path, users)
    print(f"{'updated' if existed else 'added'} {args.name} in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptgstore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, handler, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--data-dir", help="where the secret, users file and embedded Redis live")
        sub.set_defaults(handler=handler)
        return sub

    run = command("serve", serve, "run the server")
    run.add_argument("--host", help="address to bind (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="port to bind (default 7890)")
    run.add_argument("--workers", type=int, help="worker processes (default 1)")
    run.add_argument("--reload", action="store_true", help="restart when the code changes (development)")
    run.add_argument("--redis-url", help="use this Redis instead of the embedded one")
    run.add_argument("--auth", choices=["dev", "users"], help="credential policy")
    run.add_argument("--log-level", help="debug, info, warning, error")

    mint = command("token", token, "print a fresh token")
    mint.add_argument("--user", help="the token's subject (default: your login name)")

    users = command("user", user, "manage accounts of the 'users' policy")
    users.add_argument("action", choices=["add", "remove", "list"])
    users.add_argument("name", nargs="?")
    users.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    from .commands import add_client_commands  # noqa: PLC0415 - the client side lives in its own module
    add_client_commands(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SettingsError as exc:
        print(f"ptgstore: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
