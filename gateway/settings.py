"""Settings: one frozen object, loaded once at the edge from TOML and FLEETGATE_* env.

Nothing deeper in the code reads `os.environ`; everything gets a `Settings` (or the
values it needs) passed in. Validation errors name the bad key and its value.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

ENV_PREFIX = "FLEETGATE_"
DEFAULT_CONFIG_FILE = "fleetgate.toml"

_STREAM_NAME = re.compile(r"[A-Za-z0-9._:-]{0,64}", re.ASCII)
_CHOICES: dict[str, tuple[str, ...]] = {
    "usage_sink": ("spool", "redis-stream", "none"),
    "limits_outage_policy": ("local", "fail-closed", "fail-open"),
    "log_level": ("debug", "info", "warning", "error"),
    "log_format": ("json", "text"),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a Fleetgate process needs to know; see the table in docs/configuration.md."""

    state_dir: Path = Path(".fleetgate")
    database_url: str = ""  # default: sqlite:///<state_dir>/fleetgate.db
    redis_url: str | None = None
    redis_prefix: str = "fg"
    redis_timeout_ms: int = 250
    lake_url: str = ""  # default: file://<state_dir>/lake
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    admin_token: str | None = None
    gateway_url: str | None = None  # unset: the URL `opsctl up` recorded in state_dir, else http://127.0.0.1:8080
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    default_environment: str = "production"
    max_body_bytes: int = 4 * 1024 * 1024
    upstream_connect_timeout_s: float = 5.0
    upstream_timeout_s: float = 600.0  # silence from a pod mid-response; also the hard cap of any request
    # Time to the first byte of an answer (streams: the first event). Non-streamed answers also get
    # upstream_token_timeout_ms per output token they may produce. Per model: metadata
    # first_byte_timeout_s / token_timeout_ms.
    upstream_first_byte_timeout_s: float = 30.0
    upstream_token_timeout_ms: float = 200.0
    upstream_max_connections_per_host: int = 256  # more requests queue for a connection
    upstream_queue_timeout_s: float = 5.0  # longest wait for a connection slot before 503
    max_attempts: int = 3
    shadow_max_in_flight: int = 64  # mirrored (shadow) requests in flight per process; more are skipped
    health_interval_s: float = 5.0
    eject_after_failures: int = 3
    eject_cooldown_s: float = 10.0
    registry_ttl_s: int = 120
    usage_sink: str = "spool"
    lake_writer_in_gateway: bool = False  # with usage_sink=redis-stream: each worker also writes Parquet
    lake_rollups: bool = True  # lake writers keep the hourly rollups current (analytics_lake/rollup.py)
    spool_fsync_ms: int = 200
    spool_segment_bytes: int = 64 * 1024 * 1024
    lake_flush_s: float = 10.0
    lake_flush_rows: int = 500_000
    limits_outage_policy: str = "local"
    reservation_lease_s: int = 900
    budget_restore_timeout_s: float = 30.0  # longest read of budget spend from the lake (start-up waits for it)
    log_level: str = "info"
    log_format: str = "json"  # json lines (one object per line) or text
    access_log: bool = True  # one line per request: id, org, key id, model, endpoint, status, times
    metrics_token: str | None = None  # when set, GET /metrics needs "Authorization: Bearer <token>"
    header_read_timeout_s: float = 10.0  # a client must send a request's headers within this
    body_read_timeout_s: float = 30.0  # ... and its body within this
    keepalive_timeout_s: float = 75.0  # idle keep-alive connections are closed after this
    max_connections: int = 4096  # open client connections per worker; more are refused
    auth_negative_ttl_s: float = 5.0  # how long an unknown API key is remembered as unknown
    # OAuth2 access tokens (POST /oauth2/token) and personal admin tokens; see docs/access-control.md.
    oauth_issuer: str = "fleetgate"  # the `iss` claim this gateway signs and requires
    oauth_audience: str = "fleetgate-admin"  # the `aud` claim; gateways with another audience refuse the tokens
    oauth_token_ttl_s: int = 900  # lifetime of an access token (1 s to 1 day)
    oauth_leeway_s: float = 30.0  # clock skew allowed on exp/nbf between replicas (0-30 s)
    personal_token_max_days: int = 365  # longest lifetime of a personal admin token (1-3650 days)
    # With Redis: every audit entry is also added to the stream <redis_prefix>:<audit_stream> ("" = off),
    # trimmed to about audit_stream_maxlen entries; see docs/audit.md.
    audit_stream: str = "audit"
    audit_stream_maxlen: int = 100_000
    # SLO targets (TOML, docs/slo.md) for `opsctl slo` and rollout gates; unset: the built-in ones, which equal
    # helm/observability/slo.toml.
    slo_file: str | None = None
    # Analytics export jobs (docs/analytics-api.md): each gateway process runs them (export_runner), holding a
    # job's lease export_lease_s and renewing it while it works; download links live export_link_ttl_s.
    export_runner: bool = True
    export_lease_s: float = 60.0
    export_link_ttl_s: int = 3600

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"setting {name}={value!r} is invalid: expected one of {', '.join(allowed)}")
        for name in ("port",):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"setting {name}={value!r} is invalid: expected a port 0-65535")
        for name in ("workers", "max_body_bytes", "max_attempts", "registry_ttl_s", "spool_segment_bytes",
                     "eject_after_failures", "reservation_lease_s", "lake_flush_rows",
                     "upstream_max_connections_per_host", "max_connections", "shadow_max_in_flight"):
            if getattr(self, name) < 1:
                raise ConfigError(f"setting {name}={getattr(self, name)!r} is invalid: expected a positive integer")
        for name in ("upstream_connect_timeout_s", "upstream_timeout_s", "health_interval_s", "eject_cooldown_s",
                     "lake_flush_s", "upstream_first_byte_timeout_s", "upstream_queue_timeout_s",
                     "header_read_timeout_s", "body_read_timeout_s", "keepalive_timeout_s",
                     "budget_restore_timeout_s"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):  # also refuses NaN
                raise ConfigError(f"setting {name}={value!r} is invalid: expected a positive number")
        if not 0 <= self.upstream_token_timeout_ms < float("inf") or not 0 <= self.auth_negative_ttl_s < 3600:
            raise ConfigError("setting upstream_token_timeout_ms/auth_negative_ttl_s is invalid: "
                              "expected a non-negative number (auth_negative_ttl_s below 3600)")
        self._check_oauth()
        self._check_audit_stream()
        self._check_exports()
        if self.spool_fsync_ms < 0 or self.redis_timeout_ms < 1:
            raise ConfigError("setting spool_fsync_ms/redis_timeout_ms is invalid: expected a non-negative number")
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.state_dir / 'fleetgate.db'}")
        if not self.database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ConfigError(
                f"setting database_url={self.database_url!r} is invalid: expected sqlite:///PATH or postgresql://…"
            )
        if not self.lake_url:
            object.__setattr__(self, "lake_url", f"file://{self.state_dir.resolve() / 'lake'}")
        if not self.lake_url.startswith(("file://", "s3://")):
            raise ConfigError(f"setting lake_url={self.lake_url!r} is invalid: expected file:///DIR or s3://BUCKET/PREFIX")
        if self.gateway_url is not None and not self.gateway_url.startswith(("http://", "https://")):
            raise ConfigError(f"setting gateway_url={self.gateway_url!r} is invalid: expected http(s)://HOST:PORT")
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"setting redis_url={self.redis_url!r} is invalid: expected redis://HOST:PORT/DB")

    def _check_oauth(self) -> None:
        for name in ("oauth_issuer", "oauth_audience"):
            value = getattr(self, name)
            if not value or value != value.strip() or len(value) > 200:
                raise ConfigError(f"setting {name}={value!r} is invalid: expected a non-empty string of at most "
                                  "200 characters without surrounding spaces")
        for name, low, high in (("oauth_token_ttl_s", 1, 86400), ("oauth_leeway_s", 0, 30),
                                ("personal_token_max_days", 1, 3650)):
            value = getattr(self, name)
            if not low <= value <= high:  # also refuses NaN
                raise ConfigError(f"setting {name}={value!r} is invalid: expected {low} to {high}")

    def _check_audit_stream(self) -> None:
        if not _STREAM_NAME.fullmatch(self.audit_stream):
            raise ConfigError(f"setting audit_stream={self.audit_stream!r} is invalid: expected up to 64 letters, "
                              "digits, '.', '_', ':' or '-' (empty: no stream)")
        if not 1 <= self.audit_stream_maxlen <= 100_000_000:
            raise ConfigError(f"setting audit_stream_maxlen={self.audit_stream_maxlen!r} is invalid: "
                              "expected 1 to 100000000")

    def _check_exports(self) -> None:
        if not 1 <= self.export_lease_s <= 3600:  # also refuses NaN
            raise ConfigError(f"setting export_lease_s={self.export_lease_s!r} is invalid: expected 1 to 3600")
        if not 1 <= self.export_link_ttl_s <= 7 * 86400:  # SigV4 pre-signed URLs live at most 7 days
            raise ConfigError(f"setting export_link_ttl_s={self.export_link_ttl_s!r} is invalid: "
                              "expected 1 to 604800 (7 days)")

    @property
    def audit_stream_key(self) -> str | None:
        """The Redis stream audit entries are mirrored to; None without Redis or with audit_stream = ""."""
        return f"{self.redis_prefix}:{self.audit_stream}" if self.redis_url and self.audit_stream else None

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def public_dict(self) -> dict[str, Any]:
        """Settings without secrets, for logs and `opsctl config`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("admin_token", "s3_secret_key", "metrics_token") and value:
                value = "***"
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def _coerce(name: str, raw: Any, annotation: str) -> Any:
    """Turn a TOML or env value into the field's type, or raise ConfigError naming the key."""
    try:
        if annotation in ("int",):
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError  # 2.7 workers is a mistake to report, not to truncate (also inf/NaN)
            return int(raw)
        if annotation in ("float",):
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if annotation == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation == "Path":
            if not isinstance(raw, str | os.PathLike):
                raise ValueError
            return Path(raw)
        if annotation.startswith("str"):
            if raw is None or raw == "":
                return None if "None" in annotation else ""
            if not isinstance(raw, str | int | float):
                raise ValueError
            return str(raw)
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"setting {name}={raw!r} is invalid: expected {annotation}") from e
    return raw


def load_settings(
    config_file: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from (lowest to highest precedence) defaults, TOML, env, overrides.

    Args:
        config_file: a TOML file; default `./fleetgate.toml` when it exists.
        env: the environment to read `FLEETGATE_*` from (default `os.environ`).
        overrides: values from command-line flags; None values are ignored.

    Raises:
        ConfigError: unknown key, unreadable file, or a value of the wrong type or range.
    """
    env = os.environ if env is None else env
    known = {f.name: str(f.type) for f in fields(Settings)}
    values: dict[str, Any] = {}

    path = Path(config_file) if config_file else None
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = Path(DEFAULT_CONFIG_FILE)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"config file {str(path)!r} does not exist") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from e
        table = data.get("fleetgate", data)
        for key, raw in table.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"setting {key!r} in {path} is unknown")
            values[name] = _coerce(name, raw, known[name])

    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name not in known:
            continue  # other tools share the prefix (e.g. FLEETGATE_REQUIRE_SERVICES)
        values[name] = _coerce(name, raw, known[name])

    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in known:
            raise ConfigError(f"setting {name!r} is unknown")
        values[name] = _coerce(name, raw, known[name])

    return Settings(**values)
