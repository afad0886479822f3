"""`ptgstore serve | token | user`: run the server and manage who may use it;
`ptgstore streams | push | pull | dump | load | simulate | record | replay`: use it as a client."""
from __future__ import annotations

import argparse
import errno
import getpass
import importlib.util
import ipaddress
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path

from . import __version__
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
        log_level=(getattr(args, "log_level", None) or "").lower() or None,
    )


# which settings the server processes must see, as the environment they read (`workers`: each one
# reports how many serve, in /status)
_ENV_OF = {"redis_url": "REDIS_URL", "data_dir": "DATA_DIR", "auth": "AUTH", "log_level": "LOG_LEVEL",
           "metrics_dir": "METRICS_DIR", "workers": "WORKERS"}


def _fresh_metrics_dir(settings: Settings) -> tuple[Settings, str | None]:
    """Workers share their metrics through files in one directory, emptied at each start
    (stale files from an earlier run would be summed in). Returns the settings and a
    scratch directory to remove at exit, if one was made."""
    scratch = None
    directory = settings.metrics_dir
    if not directory:
        if settings.workers == 1:
            return settings, None
        directory = scratch = tempfile.mkdtemp(prefix="ptgstore-metrics-")
        settings = settings.replace(metrics_dir=scratch)
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.unlink(os.path.join(directory, name))
    return settings, scratch


def _bind_error(host: str, port: int) -> OSError | None:
    """Why (host, port) cannot be listened on (e.g. already in use), or None when it can."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            return exc
    return None


def _without_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    _, at, where = rest.rpartition("@")
    return f"{scheme}://***@{where}" if at else url


def _redis_error(url: str) -> str | None:
    """Why the configured Redis does not answer a PING, or None when it does."""
    from .connections import ping_error

    return ping_error(url, timeout=5)


# what the server imports beyond the client's dependencies: the `server` extra
SERVER_MODULES = ("uvicorn", "starlette", "redis", "hiredis", "jwt", "multipart", "prometheus_client",
                  "swagger_ui_bundle")


def missing_server_modules() -> list[str]:
    return [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]


def _needs_server(handler):
    """`ptgstore serve | token | user` run the server's code: in a client-only install, say what to install."""
    def checked(args) -> int:
        missing = missing_server_modules()
        if missing:
            print(f"ptgstore {args.command} needs the server's dependencies (missing: {', '.join(missing)}): "
                  "pip install 'ptgstore[server]' (from a clone: pip install '.[server]')", file=sys.stderr)
            return 2
        return handler(args)
    return checked


def serve(args) -> int:
    """Start uvicorn on the app with the configured host, port, workers and reload."""
    import uvicorn

    from . import serving
    from .deployment import ephemeral_disk_refusal
    from .embedded import EmbeddedRedis
    from .guards import describe_allowed_hosts
    from .private import private_dir

    settings = _settings(args)
    address, colon, port = settings.host.rpartition(":")
    if colon and port.isdigit() and (address.count(":") == 0 or address.endswith("]")):  # (not a bare IPv6 address)
        print(f"ptgstore: --host takes an address alone, not {settings.host!r}: --host {address} --port {port}",
              file=sys.stderr)
        return 2
    if settings.auth == "dev" and not _is_loopback(settings.host) and not settings.auth_explicit:
        print(f"refusing to serve the 'dev' auth policy (any user, password = name) on {settings.host}: "
              "set PTGSTORE_AUTH=users (see `ptgstore user add`), or PTGSTORE_AUTH=dev to accept the risk",
              file=sys.stderr)
        return 2
    unfit = ephemeral_disk_refusal(settings)  # (the app checks it too: the Procfile starts uvicorn alone)
    if unfit is not None:
        print(f"ptgstore: {unfit}", file=sys.stderr)
        return 2
    try:  # (the app makes it too: here an unusable one is one line, before listening)
        private_dir(Path(settings.data_dir))
    except OSError as exc:
        print(f"ptgstore: cannot use the data directory {settings.data_dir}: {exc.strerror or exc}: "
              "choose another --data-dir or PTGSTORE_DATA_DIR", file=sys.stderr)
        return 1
    refused = _bind_error(settings.host, settings.port)
    if refused is not None:
        print(f"ptgstore: cannot listen on {settings.host}:{settings.port}: {refused.strerror or refused}"
              + (" (another ptgstore, or another program, listens there): stop it or choose another --port"
                 if getattr(refused, "errno", None) == errno.EADDRINUSE else ""), file=sys.stderr)
        return 1
    if settings.redis_url is not None:  # (else the embedded one)
        # (not ptgstore.app's helper: importing that module builds its app before the settings are exported)
        unreachable = _redis_error(settings.redis_url)
        if unreachable is not None:
            print(f"ptgstore: Redis at {_without_password(settings.redis_url)} does not answer ({unreachable}): start it, "
                  "or fix --redis-url / PTGSTORE_REDIS_URL (unset, ptgstore runs its own embedded Redis)",
                  file=sys.stderr)
            return 1
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
        if settings.redis_url is None or embedded else _without_password(settings.redis_url)
    print(f"ptgstore: listening on http://{settings.host}:{settings.port} "
          f"({settings.workers} worker{'s' if settings.workers > 1 else ''})\n"
          f"ptgstore: redis {redis_text}\n"
          f"ptgstore: hosts: {describe_allowed_hosts(settings)}\n"
          f"ptgstore: auth policy '{settings.auth}'"
          + (" - any username with password equal to it; get a token with `ptgstore token`"
             if settings.auth == "dev" else f" - accounts in {settings.users_path}"), flush=True)
    try:
        uvicorn.run(
            "ptgstore.app:app", host=settings.host, port=settings.port, workers=settings.workers,
            reload=args.reload, log_level=settings.log_level, **serving.uvicorn_options(settings.max_message),
            access_log=False,  # ptgstore.access logs each request and socket, with route, user and duration
        )
    finally:
        if embedded is not None:
            embedded.stop()
        if metrics_scratch is not None:
            shutil.rmtree(metrics_scratch, ignore_errors=True)
    return 0


_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """`90`, `45s`, `30m`, `8h` or `2d` as seconds (argparse type)."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _TTL_UNITS else (text, "s")
    if not (number.isascii() and number.isdigit()) or int(number) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a lifetime such as 3600, 45s, 30m, 8h or 2d")
    return int(number) * _TTL_UNITS[unit]


def _asked_rights(args):
    """The permissions given with --read, --write and --admin (None when none was given); a
    malformed pattern ends the command."""
    from .permissions import BadPatterns, Rights, check_patterns

    if not (args.read or args.write or args.admin):
        return None
    try:
        rights = Rights(check_patterns(args.read or [], "read patterns"),
                        check_patterns(args.write or [], "write patterns"), bool(args.admin))
        return rights.claimable() if args.command == "token" else rights
    except BadPatterns as exc:
        raise SettingsError(str(exc)) from None


def token(args) -> int:
    """Print a fresh token signed with this server's secret, under the policy it runs (limited by
    --read/--write/--admin)."""
    from .auth import Authenticator
    from .permissions import Forbidden, Scope, account_rights
    from .policyfile import recorded

    settings = _settings(args)
    server = recorded(settings.data_dir)
    if server is not None:
        if settings.auth_explicit and settings.auth != server["auth"]:
            print(f"ptgstore token: the server on {settings.data_dir} runs the '{server['auth']}' policy: a "
                  f"'{settings.auth}' token would be refused there", file=sys.stderr)
            return 1
        settings = settings.replace(auth=server["auth"], users_file=server["users_file"])
    secret = Path(settings.data_dir) / "secret"
    if not settings.secret and not secret.exists():
        # a new secret here would sign tokens that the server (with its own secret) refuses
        print(f"ptgstore token: no token signing secret in {secret}: run this where the server runs, with its "
              "data directory (--data-dir or PTGSTORE_DATA_DIR, as given to `ptgstore serve`, which creates the "
              "secret), or its PTGSTORE_SECRET; or ask the server: curl -d 'username=NAME&password=PASSWORD' "
              "http://HOST:PORT/token", file=sys.stderr)
        return 1
    name = args.user or getpass.getuser()
    authenticator = Authenticator(settings)
    users = authenticator.current_users() if settings.auth == "users" else {}
    if settings.auth == "users" and name not in users:
        print(f"ptgstore token: no user {name!r} in {settings.users_path} (the 'users' policy): add one with "
              "`ptgstore user add`", file=sys.stderr)
        return 1
    wanted = _asked_rights(args)
    if wanted is not None and settings.auth == "users":
        # only narrowed: asking more than the account has would mint a token that promises it
        try:
            Scope.of(account_rights(users.get(name))).narrowed(wanted)
        except Forbidden as exc:
            print(f"ptgstore token: {name} may not have that: {exc}", file=sys.stderr)
            return 1
    print(authenticator.issue(name, wanted, args.ttl))
    return 0


def describe_rights(rights) -> str:
    """One line of `ptgstore user ls`."""
    if rights.full:
        return "full access"
    parts = [f"read {' '.join(rights.read) or '-'}", f"write {' '.join(rights.write) or '-'}"]
    return "; ".join(parts + (["admin"] if rights.admin else []))


def user(args) -> int:
    """Add, change, remove or list accounts of the `users` policy and their permissions."""
    from .permissions import FULL_RIGHTS, BadPatterns, account_rights
    from .users import hash_password, make_record, password_of, read_users, write_users

    path = _settings(args).users_path
    users = read_users(path)
    if args.action in ("list", "ls"):
        if not users:
            print(f"no users in {path}")
        width = max((len(name) for name in users), default=0)
        for name in sorted(users):
            try:
                rights = describe_rights(account_rights(users[name]))
            except BadPatterns as exc:
                rights = f"malformed permissions ({exc}): allowed nothing"
            print(f"{name:<{width}}  {rights}")
        return 0
    if not args.name:
        print("a user name is needed", file=sys.stderr)
        return 2
    wanted = FULL_RIGHTS if args.full else _asked_rights(args)
    if args.full and (args.read or args.write or args.admin):
        print("--full gives every permission: give it alone, or --read/--write/--admin", file=sys.stderr)
        return 2
    if args.action == "set":
        if args.name not in users:
            print(f"no user {args.name!r} in {path}: `ptgstore user add` creates it", file=sys.stderr)
            return 1
        if wanted is None:
            print("say what to set: --read PATTERN, --write PATTERN (repeatable), --admin, or --full",
                  file=sys.stderr)
            return 2
        users[args.name] = make_record(password_of(users[args.name]) or "", wanted)
        write_users(path, users)
        print(f"{args.name}: {describe_rights(wanted)}")
        return 0
    if args.action == "remove":
        if users.pop(args.name, None) is None:
            print(f"no user {args.name!r} in {path}", file=sys.stderr)
            return 1
        write_users(path, users)
        print(f"removed {args.name} from {path}")
        return 0
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif os.environ.get("PTGSTORE_PASSWORD"):  # as the client commands take it: for scripts and CI
        password = os.environ["PTGSTORE_PASSWORD"]
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            print("the passwords differ", file=sys.stderr)
            return 1
    if not password:
        print("an empty password is not allowed", file=sys.stderr)
        return 1
    existed = args.name in users
    if wanted is None:  # a new password keeps the permissions
        try:
            wanted = account_rights(users.get(args.name))
        except BadPatterns as exc:
            print(f"the permissions of {args.name} in {path} are malformed ({exc}): give them again", file=sys.stderr)
            return 1
    users[args.name] = make_record(hash_password(password), wanted)
    write_users(path, users)
    print(f"{'updated' if existed else 'added'} {args.name} in {path} ({describe_rights(wanted)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptgstore", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ptgstore {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, handler, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--data-dir", help="where the secret, users file and embedded Redis live")
        sub.set_defaults(handler=_needs_server(handler))
        return sub

    run = command("serve", serve, "run the server")
    run.add_argument("--host", help="address to bind (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="port to bind (default 7890)")
    run.add_argument("--workers", type=int, help="worker processes (default 1)")
    run.add_argument("--reload", action="store_true", help="restart when the code changes (development)")
    run.add_argument("--redis-url", help="use this Redis instead of the embedded one")
    run.add_argument("--auth", choices=["dev", "users"], help="credential policy")
    run.add_argument("--log-level", help="critical, error, warning, info (default), debug or trace")

    def permission_flags(sub, whom):
        sub.add_argument("--read", action="append", metavar="PATTERN",
                         help=f"stream ids {whom} may read (glob: 'hl1:*', '*:main'; repeatable)")
        sub.add_argument("--write", action="append", metavar="PATTERN",
                         help=f"stream ids {whom} may write (repeatable)")
        sub.add_argument("--admin", action="store_true",
                         help="delete streams, set metadata and max_len, manage recordings, /status, /metrics")

    mint = command("token", token, "print a fresh token")
    mint.add_argument("--user", help="the token's subject (default: your login name)")
    permission_flags(mint, "the token")
    mint.add_argument("--ttl", type=parse_ttl, help="lifetime: seconds, or 30m, 8h, 2d (default PTGSTORE_TOKEN_TTL)")

    users = command("user", user, "manage accounts of the 'users' policy and their permissions "
                                  "(an account without --read/--write/--admin has every permission)")
    users.add_argument("action", choices=["add", "set", "remove", "list", "ls"])
    users.add_argument("name", nargs="?")
    users.add_argument("--password-stdin", action="store_true",
                       help="read the password from standard input (else $PTGSTORE_PASSWORD, else a prompt)")
    permission_flags(users, "the user")
    users.add_argument("--full", action="store_true", help="every permission (as an account that lists none)")

    from .commands import add_client_commands
    add_client_commands(commands)
    return parser


def _interruptible() -> None:
    """Ctrl-C (or `kill -INT`) stops every command as at a terminal, with its summary and status 130,
    also when started with SIGINT ignored: a shell without job control starts `cmd &` so (scripts,
    pytest run in the background), its children inherit that, and Python then installs no
    KeyboardInterrupt handler, so a following pull could only be killed. (`serve` runs uvicorn, which
    installs its own handlers either way.) A handler the caller set is left alone."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv=None) -> int:
    _interruptible()
    args = build_parser().parse_args(argv)
    try:
        status = args.handler(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return status
    except SettingsError as exc:
        print(f"ptgstore: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`ptgstore streams | head -1`): stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # the status of a process ended by SIGPIPE
    except OSError as exc:
        if exc.filename is None:  # not a file the command was given or keeps: a bug, with its traceback
            raise
        # a data directory, users file or output the command cannot use: what and why, as cp or mkdir say it
        print(f"ptgstore {args.command}: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
