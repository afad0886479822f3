"""Every knob of the service, read once from PTGSTORE_* environment variables."""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

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


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


_ROOT_PATH = re.compile(r"(/[A-Za-z0-9._~!$&()*+,;=:@%-]+)*")


def _parse_root_path(name: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    if value and not value.startswith("/"):
        value = "/" + value
    if not _ROOT_PATH.fullmatch(value):
        raise SettingsError(f"{name} must be a URL path such as /store, not {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """The service's configuration; `Settings.from_env()` reads PTGSTORE_* variables."""

    redis_url: str | None = None  # None: start a private (embedded) redis-server
    redis_cluster: bool = False  # the URL names any node of a Redis Cluster
    group_separator: str = ":"  # a stream's group (its placement on a cluster): its id up to this
    host: str = "127.0.0.1"
    port: int = 7890
    workers: int = 1
    data_dir: str = field(default_factory=_default_data_dir)
    auth: str = "dev"
    auth_explicit: bool = False  # PTGSTORE_AUTH was set by the operator
    users_file: str | None = None  # default: <data_dir>/users.json
    secret: str | None = None  # default: generated once into <data_dir>/secret
    token_ttl: int = 30 * 24 * 3600
    token_verify_exp: bool = True
    ws_allowed_origins: tuple[str, ...] = ()  # besides the server's own origin
    cors_origins: tuple[str, ...] = ()
    # Host header values served besides loopback names and the address a request arrived on
    # (DNS rebinding): `name`, `name:port`, `*.domain`, or `*` for any (guards.HostGuard)
    allowed_hosts: tuple[str, ...] = ()
    login_rate: int = 10  # password checks (`users` policy) per client address and minute, in bursts of as many
    key_prefix: str = ""
    max_len: int = 1000
    max_message: int = 16 * 1024 * 1024
    max_upload: int = 4 * 1024**3  # one uploaded recording file (streamed to disk, never held in memory)
    max_chunk: int | None = None  # an MCAP chunk's uncompressed bytes; default: what the recorder may write
    redis_fsync: str = "always"  # embedded Redis only: everysec can lose acknowledged entries in a crash
    redis_pool_size: int = 64
    redis_timeout: int = 30  # seconds a Redis command may take before the store counts as unavailable
    hub_buffer: int = 1024  # recent entries kept per followed stream, per process
    hub_buffer_bytes: int = 64 * 1024 * 1024
    producer_window: int = 3600  # seconds a quiet producer's record (push `producer=`) is kept after its last batch
    producer_batches: int = 64  # batches per producer (and group) whose ids a resend is answered with
    metrics_public: bool = False  # /metrics without any token, for every client
    metrics_token: str | None = None  # a fixed bearer token for scrapers (API tokens work too)
    metrics_dir: str | None = None  # shared by worker processes: prometheus_client's multiprocess mode
    metrics_stream_labels: bool = False  # label entry counters by stream (unbounded cardinality)
    ephemeral_disk: bool = False  # the data directory vanishes on restart (Procfile hosts): demand what must persist
    root_path: str = ""  # the path prefix a proxy serves ptgstore under (e.g. /store), for URLs the app writes
    access_log: bool = True  # a ptgstore.access line per HTTP request (sockets are always logged)
    log_level: str = "info"
    recordings_dir: str | None = None  # default: <data_dir>/recordings
    recording_segment_seconds: int = 10  # a recording's MCAP files are finished at least this often
    recording_segment_mb: int = 256  # ... or when one reaches this size
    recording_shards: int = 4  # a recording's streams are shared out among the processes in this many shards
    foxglove_scan_ms: int = 1000  # how often /foxglove looks for new streams (once per process)
    foxglove_queue_bytes: int = 1024 * 1024  # per Foxglove subscription: more waiting drops the oldest

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
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Build settings from `env` (default: os.environ); keyword overrides win (command-line flags)."""
        env = os.environ if env is None else env
        values: dict = {}
        readers = {
            "REDIS_URL": ("redis_url", lambda n, v: v.strip() or None),
            "REDIS_CLUSTER": ("redis_cluster", _parse_bool),
            "GROUP_SEPARATOR": ("group_separator", lambda n, v: v),
            "HOST": ("host", lambda n, v: v.strip()),
            "PORT": ("port", lambda n, v: _parse_int(n, v, 0)),
            "WORKERS": ("workers", lambda n, v: _parse_int(n, v, 1)),
            "DATA_DIR": ("data_dir", lambda n, v: str(Path(v).expanduser())),
            "AUTH": ("auth", lambda n, v: v.strip().lower()),
            "USERS_FILE": ("users_file", lambda n, v: str(Path(v).expanduser())),
            "SECRET": ("secret", lambda n, v: v or None),
            "TOKEN_TTL": ("token_ttl", lambda n, v: _parse_int(n, v, 1)),
            "TOKEN_VERIFY_EXP": ("token_verify_exp", _parse_bool),
            "WS_ALLOWED_ORIGINS": ("ws_allowed_origins", lambda n, v: _parse_list(v)),
            "CORS_ORIGINS": ("cors_origins", lambda n, v: _parse_list(v)),
            "ALLOWED_HOSTS": ("allowed_hosts", lambda n, v: tuple(h.lower() for h in _parse_list(v))),
            "LOGIN_RATE": ("login_rate", lambda n, v: _parse_int(n, v, 1)),
            "KEY_PREFIX": ("key_prefix", lambda n, v: v),
            "MAX_LEN": ("max_len", lambda n, v: _parse_int(n, v, 1)),
            "MAX_MESSAGE": ("max_message", lambda n, v: _parse_int(n, v, 1)),
            "MAX_UPLOAD": ("max_upload", lambda n, v: _parse_int(n, v, 1)),
            "MAX_CHUNK": ("max_chunk", lambda n, v: _parse_int(n, v, 1)),
            "REDIS_FSYNC": ("redis_fsync", lambda n, v: v.strip().lower()),
            "REDIS_POOL_SIZE": ("redis_pool_size", lambda n, v: _parse_int(n, v, 1)),
            "REDIS_TIMEOUT": ("redis_timeout", lambda n, v: _parse_int(n, v, 1)),
            "HUB_BUFFER": ("hub_buffer", lambda n, v: _parse_int(n, v, 1)),
            "HUB_BUFFER_BYTES": ("hub_buffer_bytes", lambda n, v: _parse_int(n, v, 0)),
            "PRODUCER_WINDOW": ("producer_window", lambda n, v: _parse_int(n, v, 1)),
            "PRODUCER_BATCHES": ("producer_batches", lambda n, v: _parse_int(n, v, 1)),
            "METRICS_PUBLIC": ("metrics_public", _parse_bool),
            "METRICS_TOKEN": ("metrics_token", lambda n, v: v or None),
            "METRICS_DIR": ("metrics_dir", lambda n, v: str(Path(v).expanduser()) if v.strip() else None),
            "METRICS_STREAM_LABELS": ("metrics_stream_labels", _parse_bool),
            "ACCESS_LOG": ("access_log", _parse_bool),
            "ROOT_PATH": ("root_path", _parse_root_path),
            "EPHEMERAL_DISK": ("ephemeral_disk", _parse_bool),
            "LOG_LEVEL": ("log_level", lambda n, v: v.strip().lower()),
            "RECORDINGS_DIR": ("recordings_dir", lambda n, v: str(Path(v).expanduser()) if v.strip() else None),
            "RECORDING_SEGMENT_SECONDS": ("recording_segment_seconds", lambda n, v: _parse_int(n, v, 1)),
            "RECORDING_SEGMENT_MB": ("recording_segment_mb", lambda n, v: _parse_int(n, v, 1)),
            "RECORDING_SHARDS": ("recording_shards", lambda n, v: _parse_int(n, v, 1)),
            "FOXGLOVE_SCAN_MS": ("foxglove_scan_ms", lambda n, v: _parse_int(n, v, 10)),
            "FOXGLOVE_QUEUE_BYTES": ("foxglove_queue_bytes", lambda n, v: _parse_int(n, v, 1)),
        }
        for suffix, (attr, parse) in readers.items():
            name = "PTGSTORE_" + suffix
            if name in env:
                values[attr] = parse(name, env[name])
        if "auth" in values:
            values["auth_explicit"] = True
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "auth" in overrides and overrides["auth"] is not None:
            values["auth_explicit"] = True
        return cls(**values)

    def replace(self, **changes) -> "Settings":
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
