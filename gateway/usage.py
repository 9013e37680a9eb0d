"""Where the gateway's usage events go: the configured sink of `analytics_lake`, built from Settings."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from analytics_lake.location import LakeConfig
from gateway.settings import Settings


def lake_config(settings: Settings) -> LakeConfig:
    return LakeConfig(url=settings.lake_url, s3_endpoint=settings.s3_endpoint, s3_region=settings.s3_region,
                      s3_access_key=settings.s3_access_key, s3_secret_key=settings.s3_secret_key)


def usage_stream(settings: Settings) -> str:
    return f"{settings.redis_prefix}:usage"


def lake_writer(settings: Settings, consumer: str):  # noqa: ANN201 - a LakeWriter, or None
    """The stream → Parquet writer a gateway worker runs itself, when configured to."""
    if settings.usage_sink != "redis-stream" or not settings.lake_writer_in_gateway or not settings.redis_url:
        return None
    from analytics_lake.redis_stream import LakeWriter

    return LakeWriter(settings.redis_url, lake_config(settings), stream=usage_stream(settings), consumer=consumer,
                      flush_interval_s=settings.lake_flush_s, batch_rows=settings.lake_flush_rows)


def spool_dir(settings: Settings, writer_id: str) -> Path:
    return Path(settings.state_dir) / "spool" / writer_id


def build_sink(settings: Settings, writer_id: str):  # noqa: ANN201 - a UsageSink, or None
    """The sink named by `settings.usage_sink` (not started), or None for "none"."""
    if settings.usage_sink == "none":
        return None
    if settings.usage_sink == "redis-stream":
        from analytics_lake.redis_stream import RedisStreamSink

        if not settings.redis_url:
            from gateway.errors import ConfigError

            raise ConfigError("setting usage_sink='redis-stream' needs redis_url")
        return RedisStreamSink(settings.redis_url, stream=usage_stream(settings))
    from analytics_lake.spool import SpoolSink

    return SpoolSink(spool_dir(settings, writer_id), lake_config(settings), writer_id,
                     fsync_ms=settings.spool_fsync_ms, segment_bytes=settings.spool_segment_bytes,
                     flush_interval_s=settings.lake_flush_s, flush_rows=settings.lake_flush_rows)


def spend_since(settings: Settings, *, org_id: str, key_id: str | None, since: datetime | None) -> int:
    """Spend in the lake (micro-USD) for budget rebuilds; blocking (run it in a thread)."""
    from analytics_lake.query import LakeQuery

    with LakeQuery(lake_config(settings)) as query:
        return query.spent_micros(org_id, key_id=key_id, since=since)
