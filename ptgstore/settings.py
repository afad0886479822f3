"""Every knob of the service, read once from PTGSTORE_* environment variables.

Each field of `Settings` that the operator sets carries its environment variable, its reader and its
meaning in the field's metadata (`env(...)`): that one description drives `Settings.from_env` and the
documentation's configuration page (docs/hooks/configuration.py renders it at `mkdocs build`).
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

AUTH_POLICIES = ("dev", "users")
FSYNC_POLICIES = ("always", "everysec", "no")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's names
REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")


PROMETHEUS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own: read when it is imported


def prometheus_dir() -> str | None:
    """The directory prometheus_client shares between processes, as its variable says now."""
    return os.environ.get(PROMETHEUS_DIR_VARIABLE)


def export_prometheus_dir(path: str) -> None:
    """Tell prometheus_client (imported later in this process, or in its worker processes) to share `path`."""
    os.environ[PROMETHEUS_DIR_VARIABLE] = path


class SettingsError(ValueError):
    """A configuration value that cannot be used, with the variable to fix."""


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "ptgstore")


# A reader takes the variable's name (for its error message) and its raw text, and answers the value.
Reader = Callable[[str, str], Any]


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, not {raw!r}")


def _parse_int(name: str, raw: str, minimum: int) -> int:
    text = raw.strip()
    if not (text.isascii() and text.lstrip("-").isdigit()):
        raise SettingsError(f"{name} must be a whole number, not {raw!r}")
    value = int(text)
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, not {value}")
    return value


def _whole(minimum: int) -> Reader:
    """A whole number of at least `minimum`."""
    return lambda name, raw: _parse_int(name, raw, minimum)


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _list(_name: str, raw: str) -> tuple[str, ...]:
    return _parse_list(raw)


def _host_list(_name: str, raw: str) -> tuple[str, ...]:
    return tuple(host.lower() for host in _parse_list(raw))


def _text(_name: str, raw: str) -> str:
    return raw


def _stripped(_name: str, raw: str) -> str:
    return raw.strip()


def _lowered(_name: str, raw: str) -> str:
    return raw.strip().lower()


def _text_or_unset(_name: str, raw: str) -> str | None:
    return raw or None


def _url_or_unset(_name: str, raw: str) -> str | None:
    return raw.strip() or None


def _path(_name: str, raw: str) -> str:
    return str(Path(raw).expanduser())


def _path_or_unset(_name: str, raw: str) -> str | None:
    return str(Path(raw).expanduser()) if raw.strip() else None


_ROOT_PATH = re.compile(r"(/[A-Za-z0-9._~!$&()*+,;=:@%-]+)*")


def _parse_root_path(name: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    if value and not value.startswith("/"):
        value = "/" + value
    if not _ROOT_PATH.fullmatch(value):
        raise SettingsError(f"{name} must be a URL path such as /store, not {raw!r}")
    return value


@dataclass(frozen=True)
class Variable:
    """The environment variable behind a setting: its name, its reader, what it means (Markdown) and, where the
    field's default does not say it plainly, the default as the documentation states it."""

    name: str
    read: Reader
    meaning: str
    default: str | None = None


ENV = "ptgstore.env"  # the key of a field's Variable in its metadata


def env(suffix: str, read: Reader, meaning: str, default: str | None = None) -> dict[str, Variable]:
    """The metadata of a setting read from `PTGSTORE_<suffix>`."""
    return {ENV: Variable("PTGSTORE_" + suffix, read, meaning, default)}


def variables() -> list[tuple[dataclasses.Field[Any], Variable]]:
    """Every setting read from the environment, with its variable, in the order of the fields."""
    return [(f, f.metadata[ENV]) for f in dataclasses.fields(Settings) if ENV in f.metadata]


@dataclass(frozen=True)
class Settings:
    """The service's configuration; `Settings.from_env()` reads PTGSTORE_* variables (each field's `env(...)`)."""

    redis_url: str | None = field(default=None, metadata=env(
        "REDIS_URL", _url_or_unset,
        "Redis to use (`redis://`, `rediss://`, `unix://`); unset starts the embedded one (a private `redis-server`)",
        "unset (embedded)"))
    redis_cluster: bool = field(default=False, metadata=env(
        "REDIS_CLUSTER", _parse_bool,
        "`PTGSTORE_REDIS_URL` names any node of a Redis Cluster (the others are discovered; `rediss://` and a "
        "password work; needs redis-py 6.2+ and Redis 7): see [Scaling](scaling.md)"))
    group_separator: str = field(default=":", metadata=env(
        "GROUP_SEPARATOR", _text,
        "a stream's group is its id up to this: on a cluster a group's streams share a slot, a recording's shard "
        "follows its group, and a batch stays in one group (not empty, no `+`)"))
    host: str = field(default="127.0.0.1", metadata=env("HOST", _stripped, "where `ptgstore serve` listens (`--host`)"))
    port: int = field(default=7890, metadata=env("PORT", _whole(0), "the port `ptgstore serve` listens on (`--port`)"))
    workers: int = field(default=1, metadata=env(
        "WORKERS", _whole(1), "worker processes of `ptgstore serve` (`--workers`; they share one Redis)"))
    data_dir: str = field(default_factory=_default_data_dir, metadata=env(
        "DATA_DIR", _path, "token secret, users file, embedded Redis data, recordings (`--data-dir`)",
        "`~/.local/share/ptgstore` (under `$XDG_DATA_HOME` when set)"))
    auth: str = field(default="dev", metadata=env(
        "AUTH", _lowered,
        "`dev` (any username whose password equals it, logged loudly; refused on non-loopback addresses unless "
        "set explicitly) or `users` (the users file) (`--auth`)"))
    auth_explicit: bool = False  # PTGSTORE_AUTH (or --auth) was set by the operator
    users_file: str | None = field(default=None, metadata=env(
        "USERS_FILE", _path, "accounts of the `users` policy (`ptgstore user add`)", "`<data dir>/users.json`"))
    secret: str | None = field(default=None, metadata=env(
        "SECRET", _text_or_unset,
        "token signing secret; the same in every process on one Redis (a process with another one says so at "
        "start-up)", "generated into `<data dir>/secret`"))
    token_ttl: int = field(default=30 * 24 * 3600, metadata=env(
        "TOKEN_TTL", _whole(1), "token lifetime in seconds", "`2592000` (30 days)"))
    token_verify_exp: bool = field(default=True, metadata=env(
        "TOKEN_VERIFY_EXP", _parse_bool,
        "`false` accepts expired tokens (for headsets carrying the original server's tokens; logged as insecure)"))
    ws_allowed_origins: tuple[str, ...] = field(default=(), metadata=env(
        "WS_ALLOWED_ORIGINS", _list,
        "origins (`https://host:port`, comma-separated), besides the server's own, whose cookie-only WebSockets and "
        "state-changing REST requests (POST, PUT, DELETE) are accepted; other sites' pages get 403 (CSRF)"))
    cors_origins: tuple[str, ...] = field(default=(), metadata=env(
        "CORS_ORIGINS", _list, "origins allowed by CORS for REST (comma-separated; `*` for any)"))
    allowed_hosts: tuple[str, ...] = field(default=(), metadata=env(  # guards.HostGuard (DNS rebinding)
        "ALLOWED_HOSTS", _host_list,
        "`Host` names served besides `localhost`, `*.localhost`, loopback addresses, the address a request arrived "
        "on, the bind address and this machine's host name (and `name.local`): clients (headsets, scrapers) that "
        "reach the server by another DNS name need it listed: `name` (any port), `name:port`, `*.domain`, "
        "`[v6 address]`, or `*` (any: no DNS rebinding guard). Other names get 400, WebSocket handshakes too. "
        "**Behind a proxy** (Caddy, nginx, a platform router) that passes the browser's `Host` on, set it to the "
        "public name (`store.example.org`)"))
    login_rate: int = field(default=10, metadata=env(
        "LOGIN_RATE", _whole(1),
        "under the `users` policy, `POST /token` attempts per client address and minute (bursts of as many), all "
        "clients together ten times that; beyond, 429 with `Retry-After`. Behind a proxy, let uvicorn trust its "
        "`X-Forwarded-For` (`FORWARDED_ALLOW_IPS`), or every client shares the proxy's address"))
    key_prefix: str = field(default="", metadata=env("KEY_PREFIX", _text, "prefix of every Redis key"))
    max_len: int = field(default=1000, metadata=env(
        "MAX_LEN", _whole(1), "entries kept per stream unless its metadata sets `max_len`"))
    max_message: int = field(default=16 * 1024 * 1024, metadata=env(
        "MAX_MESSAGE", _whole(1),
        "largest REST body (413) and WebSocket message (close 1009), bytes; also the largest entry an uploaded "
        "recording may hold, and replay skips larger ones", "`16777216` (16 MiB)"))
    max_upload: int = field(default=4 * 1024**3, metadata=env(
        "MAX_UPLOAD", _whole(1),
        "largest recording file upload (`POST /recordings/upload/...`, streamed to disk, never held in memory; "
        "413 beyond), bytes", "`4294967296` (4 GiB)"))
    max_chunk: int | None = field(default=None, metadata=env(
        "MAX_CHUNK", _whole(1),
        "largest uncompressed MCAP chunk read back (uploads, info, replay; 413 / close 1009 beyond), bytes",
        "what the recorder may write: 4 MiB + 4/3 × `PTGSTORE_MAX_MESSAGE` + 2 MiB"))
    redis_fsync: str = field(default="always", metadata=env(
        "REDIS_FSYNC", _lowered,
        "embedded Redis append-only fsync policy: `always`, `everysec` (faster; a crash can lose acknowledged "
        "entries, see [Security](security.md)), `no`"))
    redis_pool_size: int = field(default=64, metadata=env(
        "REDIS_POOL_SIZE", _whole(1),
        "Redis connections shared by all requests of a worker (on a cluster: per node, per process)"))
    redis_timeout: int = field(default=30, metadata=env(
        "REDIS_TIMEOUT", _whole(1),
        "seconds a Redis command may take before the request fails as store unavailable (503 / close 1011)"))
    hub_buffer: int = field(default=1024, metadata=env(
        "HUB_BUFFER", _whole(1), "newest entries kept in memory per followed stream for live pulls, per process"))
    hub_buffer_bytes: int = field(default=64 * 1024 * 1024, metadata=env(
        "HUB_BUFFER_BYTES", _whole(0), "at most this many bytes of them", "`67108864` (64 MiB)"))
    producer_window: int = field(default=3600, metadata=env(
        "PRODUCER_WINDOW", _whole(1),
        "idempotent pushes: seconds a quiet producer (push `producer=`) is remembered after its last batch "
        "([protocol](protocol.md#idempotent-pushes-producer-and-seq))"))
    producer_batches: int = field(default=64, metadata=env(
        "PRODUCER_BATCHES", _whole(1),
        "idempotent pushes: how many of a producer's (and group's) newest batches a resend is answered for"))
    metrics_public: bool = field(default=False, metadata=env(
        "METRICS_PUBLIC", _parse_bool,
        "`true` serves `/metrics` to anyone without a token (logged as a warning at start-up); otherwise "
        "`/metrics` needs a token like every other route"))
    metrics_token: str | None = field(default=None, metadata=env(
        "METRICS_TOKEN", _text_or_unset, "a fixed bearer token for scrapers (an API token works too)"))
    metrics_dir: str | None = field(default=None, metadata=env(
        "METRICS_DIR", _path_or_unset,
        "where worker processes share their metrics (prometheus_client's multiprocess mode); `ptgstore serve` "
        "empties it at start", "unset (temporary with `--workers` > 1)"))
    metrics_stream_labels: bool = field(default=False, metadata=env(
        "METRICS_STREAM_LABELS", _parse_bool,
        "label entry counters by stream (a time series per stream id: only for a few streams)"))
    ephemeral_disk: bool = field(default=False, metadata=env(
        "EPHEMERAL_DISK", _parse_bool,
        "the data directory is lost at each restart: refuse to start unless `PTGSTORE_SECRET`, "
        "`PTGSTORE_REDIS_URL`, `PTGSTORE_AUTH=users` and a non-empty `PTGSTORE_USERS_FILE` are set, and refuse "
        "recordings unless `PTGSTORE_RECORDINGS_DIR` is set", "`false` (`true` from the Procfile)"))
    root_path: str = field(default="", metadata=env(
        "ROOT_PATH", _parse_root_path,
        "the path prefix a reverse proxy serves ptgstore under (e.g. `/store`, the proxy stripping it): the "
        "`/docs` page and `/openapi.json` write their URLs with it. `uvicorn --root-path /store` works too"))
    access_log: bool = field(default=True, metadata=env(
        "ACCESS_LOG", _parse_bool,
        "a `ptgstore.access` line per HTTP request (WebSocket open/close lines stay)"))
    log_level: str = field(default="info", metadata=env(
        "LOG_LEVEL", _lowered, "`critical`, `error`, `warning`, `info`, `debug`, `trace` (`--log-level`)"))
    recordings_dir: str | None = field(default=None, metadata=env(
        "RECORDINGS_DIR", _path_or_unset,
        "where recordings are written: one directory shared by every process on one Redis "
        "(see [Recordings](recordings.md))", "`<data dir>/recordings`"))
    recording_segment_seconds: int = field(default=10, metadata=env(
        "RECORDING_SEGMENT_SECONDS", _whole(1), "a recording's MCAP files are finished at least this often"))
    recording_segment_mb: int = field(default=256, metadata=env(
        "RECORDING_SEGMENT_MB", _whole(1), "... or when one reaches this size (MB)"))
    recording_shards: int = field(default=4, metadata=env(
        "RECORDING_SHARDS", _whole(1),
        "a recording's streams are shared out among the processes in this many shards (by group)"))
    foxglove_scan_ms: int = field(default=1000, metadata=env(
        "FOXGLOVE_SCAN_MS", _whole(10),
        "how often (ms) each process lists the streams for open `/foxglove` sockets (new streams appear within "
        "that time; deletes at once)"))
    foxglove_queue_bytes: int = field(default=1024 * 1024, metadata=env(
        "FOXGLOVE_QUEUE_BYTES", _whole(1),
        "encoded messages waiting per Foxglove subscription before the oldest are dropped",
        "`1048576` (1 MiB)"))

    def __post_init__(self) -> None:
        if self.auth not in AUTH_POLICIES:
            raise SettingsError(f"PTGSTORE_AUTH must be one of {', '.join(AUTH_POLICIES)}, not {self.auth!r}")
        if self.redis_fsync not in FSYNC_POLICIES:
            raise SettingsError(
                f"PTGSTORE_REDIS_FSYNC must be one of {', '.join(FSYNC_POLICIES)}, not {self.redis_fsync!r}"
            )
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"PTGSTORE_LOG_LEVEL (--log-level) must be one of {', '.join(LOG_LEVELS)}, "
                                f"not {self.log_level!r}")
        if self.redis_url is not None and not self.redis_url.lower().startswith(REDIS_URL_SCHEMES):
            raise SettingsError(f"PTGSTORE_REDIS_URL (--redis-url) must start with {', '.join(REDIS_URL_SCHEMES)}, "
                                f"not {self.redis_url!r} (unset, ptgstore runs its own embedded Redis)")
        if self.redis_cluster and (self.redis_url is None or self.redis_url.lower().startswith("unix://")):
            raise SettingsError("PTGSTORE_REDIS_CLUSTER needs PTGSTORE_REDIS_URL naming a node of the cluster "
                                "(redis:// or rediss://)")
        if not self.group_separator or "+" in self.group_separator:
            raise SettingsError(f"PTGSTORE_GROUP_SEPARATOR must be a non-empty string without '+', "
                                f"not {self.group_separator!r}")
        for name in ("port", "workers", "token_ttl", "max_len", "max_message", "max_upload", "redis_pool_size",
                     "redis_timeout", "hub_buffer", "producer_window", "producer_batches", "foxglove_scan_ms",
                     "foxglove_queue_bytes", "login_rate", "recording_shards"):
            value = getattr(self, name)
            if value < (0 if name == "port" else 1) or (name == "port" and value > 65535):
                raise SettingsError(f"PTGSTORE_{name.upper()} is out of range: {value}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from `env` (default: os.environ); keyword overrides win (command-line flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for setting, variable in variables():
            if variable.name in env:
                values[setting.name] = variable.read(variable.name, env[variable.name])
        if "auth" in values:
            values["auth_explicit"] = True
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "auth" in overrides and overrides["auth"] is not None:
            values["auth_explicit"] = True
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed (None leaves a value as it is)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def users_path(self) -> Path:
        return Path(self.users_file) if self.users_file else Path(self.data_dir) / "users.json"

    @property
    def recordings_path(self) -> Path:
        return Path(self.recordings_dir) if self.recordings_dir else Path(self.data_dir) / "recordings"

    @property
    def recordings_refusal(self) -> str | None:
        """Why this process may not record at all (its recordings would not outlive a restart)."""
        if self.ephemeral_disk and not self.recordings_dir:
            return ("PTGSTORE_EPHEMERAL_DISK=true: recordings under the data directory would be lost at the next "
                    "restart; set PTGSTORE_RECORDINGS_DIR to persistent storage shared by every process")
        return None

    @property
    def max_chunk_bytes(self) -> int:
        """The largest MCAP chunk read (uncompressed): PTGSTORE_MAX_CHUNK, by default the recorder's 4 MiB
        chunks plus one entry of PTGSTORE_MAX_MESSAGE as base64 JSON, with 2 MiB to spare (27.3 MiB)."""
        if self.max_chunk is not None:
            return self.max_chunk
        return 4 * 1024 * 1024 + self.max_message * 4 // 3 + 2 * 1024 * 1024

    @property
    def embedded(self) -> bool:
        return self.redis_url is None
