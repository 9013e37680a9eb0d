"""Where the gateway's usage events go (the configured sink of `analytics_lake`), and how budgets
read their spend back from the lake; both built from Settings."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from analytics_lake.errors import LakeError
from analytics_lake.location import LakeConfig
from analytics_lake.sink import UsageSink
from gateway.settings import Settings

if TYPE_CHECKING:  # opsctl's lake commands import this module: keep the limits package out of them
    from gateway.limits.restore import BudgetRestorer, SpendWindow


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
                      flush_interval_s=settings.lake_flush_s, batch_rows=settings.lake_flush_rows,
                      rollups=settings.lake_rollups)


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
                     flush_interval_s=settings.lake_flush_s, flush_rows=settings.lake_flush_rows,
                     rollups=settings.lake_rollups)


def budget_restorer(settings: Settings, sink: UsageSink | None) -> BudgetRestorer:
    """The restorer that gives budget counters their spend from the lake (gateway/limits/restore.py):
    `sink` is flushed first, the query runs in a thread and is stopped after
    `budget_restore_timeout_s`."""
    from gateway.limits.restore import BudgetRestorer, RestoreFailed

    config = lake_config(settings)
    timeout_s = settings.budget_restore_timeout_s

    def query(windows: Sequence[SpendWindow]) -> list[int]:
        from analytics_lake.query import LakeQuery

        with LakeQuery(config) as lake:
            return lake.spend_windows(windows, timeout_s=timeout_s)

    async def lake_spend(windows: Sequence[SpendWindow]) -> list[int]:
        import pyarrow as pa

        try:
            # The thread stops the query itself; the outer bound also covers listing the lake.
            return await asyncio.wait_for(asyncio.to_thread(query, windows), timeout_s + 1.0)
        except TimeoutError as e:
            raise RestoreFailed(f"reading spend from the usage lake took longer than {timeout_s:g}s") from e
        except (LakeError, OSError, pa.ArrowException) as e:
            raise RestoreFailed(f"reading spend from the usage lake failed: {e}") from e

    async def flush() -> None:
        import pyarrow as pa

        assert sink is not None
        # Shielded: a flush cancelled halfway could convert a spool segment twice; a slow one
        # goes on in the background (its sink reports its own errors) while this restore gives up.
        task = asyncio.ensure_future(sink.flush())
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError as e:
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise RestoreFailed(f"writing usage events to the lake took longer than {timeout_s:g}s") from e
        except (LakeError, OSError, pa.ArrowException) as e:
            raise RestoreFailed(f"writing usage events to the lake failed: {e}") from e

    return BudgetRestorer(lake_spend, flush=flush if sink is not None else None,
                          follow_up_s=2 * settings.lake_flush_s + 5.0)
