"""Where the lake lives: a local directory or an S3 prefix, as a pyarrow filesystem + base path.

Also the partition layout `usage/dt=YYYY-MM-DD/hour=HH/part-<writer>-<seq>.parquet`, in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from analytics_lake.errors import LakeInputError

USAGE_DIR = "usage"
_NAME_PART = re.compile(r"^[A-Za-z0-9_.\-]+$")
_HOUR_DIR = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})/hour=(\d{2})$")


@dataclass(frozen=True, slots=True)
class LakeConfig:
    """The lake's address: `file:///dir` or `s3://bucket/prefix`, plus S3 connection details."""

    url: str
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Lake:
    """An opened lake: the filesystem and the base path (no trailing slash) inside it."""

    fs: pafs.FileSystem
    base: str
    is_local: bool
    config: LakeConfig

    @property
    def usage_root(self) -> str:
        return f"{self.base}/{USAGE_DIR}"

    def hour_dir(self, dt: str, hour: int) -> str:
        return f"{self.usage_root}/dt={dt}/hour={hour:02d}"


def open_lake(config: LakeConfig | Lake) -> Lake:
    """Build the filesystem for `config`; a local lake directory is created if missing.

    Raises:
        LakeInputError: the URL is neither file:// nor s3://BUCKET[/PREFIX].
    """
    if isinstance(config, Lake):
        return config
    parts = urlsplit(config.url)
    if parts.scheme == "file":
        path = Path(parts.netloc + parts.path) if parts.netloc else Path(parts.path)
        if not str(path) or not path.is_absolute():
            raise LakeInputError(f"lake url {config.url!r} must be file:///ABSOLUTE/DIR")
        path.mkdir(parents=True, exist_ok=True)
        return Lake(pafs.LocalFileSystem(), str(path).rstrip("/") or "/", True, config)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise LakeInputError(f"lake url {config.url!r} must be s3://BUCKET/PREFIX")
        kwargs: dict = {"region": config.s3_region}
        if config.s3_access_key and config.s3_secret_key:
            kwargs.update(access_key=config.s3_access_key, secret_key=config.s3_secret_key)
        if config.s3_endpoint:
            endpoint = urlsplit(config.s3_endpoint if "://" in config.s3_endpoint else f"https://{config.s3_endpoint}")
            kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https")
        base = f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
        return Lake(pafs.S3FileSystem(**kwargs), base, False, config)
    raise LakeInputError(f"lake url {config.url!r} is invalid: expected file:///DIR or s3://BUCKET/PREFIX")


def check_name_part(value: str, what: str) -> str:
    """Writer ids and sequence numbers end up in file names: keep them to [A-Za-z0-9_.-]."""
    if not value or not _NAME_PART.match(value):
        raise LakeInputError(f"{what} {value!r} is invalid: use letters, digits, '_', '.', '-'")
    return value


def part_name(writer_id: str, seq: str) -> str:
    return f"part-{writer_id}-{seq}.parquet"


def is_data_file(name: str) -> bool:
    """Visible data files; temp files start with '.', compaction manifests with '_'."""
    return name.startswith("part-") and name.endswith(".parquet")


def hour_of(hour_key: int) -> tuple[str, int]:
    """`ts // 3600e6` → ('YYYY-MM-DD', HH) in UTC."""
    moment = datetime.fromtimestamp(hour_key * 3600, tz=UTC)
    return moment.strftime("%Y-%m-%d"), moment.hour


def parse_hour_dir(relative: str) -> tuple[str, int] | None:
    """'dt=2026-01-02/hour=05' → ('2026-01-02', 5); None for anything else."""
    m = _HOUR_DIR.match(relative)
    return (m.group(1), int(m.group(2))) if m else None
