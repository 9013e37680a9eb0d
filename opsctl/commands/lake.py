"""`opsctl lake …`, `opsctl usage …` and `opsctl sql`: thin shells over analytics_lake.

Lake errors map to exit codes: bad input (LakeInputError, incl. refused SQL) 2, failed operation 1.
DuckDB, pyarrow and Redis load inside the commands, so `opsctl --help` does not pay for them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from opsctl.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    CliError,
    ConfigOpt,
    GatewayOpt,
    Output,
    OutputOpt,
    TokenOpt,
    admin_client,
    handle_errors,
    load_cli_settings,
    new_app,
    render,
    resolve_org,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from analytics_lake.location import LakeConfig

lake_app = new_app("The usage lake: flush, compact, verify, stream writer.")
usage_app = new_app("Usage reports and exports from the lake.")

# The lake's own defaults (analytics_lake.redis_stream), repeated so that help needs no Redis import;
# tests/unit/test_cli_startup.py checks they agree.
DEFAULT_STREAM = "fg:usage"
DEFAULT_GROUP = "lake-writers"

OrgOpt = Annotated[str | None, typer.Option("--org", help="only this org's usage (name or id; a name is "
                                                            "looked up through the gateway)")]

F = TypeVar("F", bound=Callable[..., Any])


def lake_errors(func: F) -> F:
    """LakeInputError → exit 2, other LakeError → exit 1, one line on stderr (via handle_errors)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from analytics_lake.errors import LakeError, LakeInputError

        try:
            return func(*args, **kwargs)
        except LakeInputError as e:
            raise CliError(str(e), EXIT_USAGE) from e
        except LakeError as e:
            raise CliError(str(e), EXIT_FAILED) from e

    return handle_errors(wrapper)  # type: ignore[return-value]


def _lake(config: str | None, **overrides: Any) -> LakeConfig:
    from gateway.usage import lake_config

    return lake_config(load_cli_settings(config, **overrides))


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def csv_text(table: pa.Table) -> str:
    """The CSV of `opsctl sql --format csv` (the TUI's export writes the same)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    sink = pa.BufferOutputStream()
    pacsv.write_csv(_csv_ready(table), sink)
    return sink.getvalue().to_pybytes().decode()


def _csv_ready(table: pa.Table) -> pa.Table:
    """Decimals as exact text (CSV readers must not see binary floats for money)."""
    import pyarrow as pa

    cols = [c.cast(pa.string()) if pa.types.is_decimal(c.type) else c for c in table.columns]
    return pa.table(cols, names=table.column_names)


# -- opsctl lake ------------------------------------------------------------------------------


@lake_app.command("flush")
@lake_errors
def flush_command(
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
    gateway: GatewayOpt = None,
    admin_token: TokenOpt = None,
    local_only: Annotated[bool, typer.Option("--local-only", help="do not ask a running gateway")] = False,
) -> None:
    """Flush usage to the lake: ask the running gateway to flush its spool, then write leftover
    spool segments of stopped gateways (<state_dir>/spool/*)."""
    from analytics_lake.spool_files import flush_spool_tree
    from gateway.usage import lake_config

    settings = load_cli_settings(config)
    result: dict[str, Any] = {"gateway": "not asked"}
    if not local_only:
        from gateway.errors import FleetgateError

        try:
            with admin_client(gateway, admin_token, config) as client:
                result["gateway"] = client.post("/admin/v1/usage/flush")["flushed"]
        except FleetgateError as e:
            result["gateway"] = f"not flushed: {e.message}"
    report = flush_spool_tree(Path(settings.state_dir) / "spool", lake_config(settings))
    render({**result, **report.as_dict()}, output)


@lake_app.command("compact")
@lake_errors
def compact_command(
    before: Annotated[str | None, typer.Option("--before", help="only hours before this day (YYYY-MM-DD)")] = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Merge each hour's small files into one, removing duplicate request_ids."""
    from datetime import date

    from analytics_lake.compaction import compact
    from analytics_lake.errors import LakeInputError

    day = None
    if before is not None:
        try:
            day = date.fromisoformat(before)
        except ValueError as e:
            raise LakeInputError(f"--before {before!r} is invalid: expected YYYY-MM-DD") from e
    render(compact(_lake(config), before=day), output)


@lake_app.command("verify")
@lake_errors
def verify_command(config: ConfigOpt = None, output: OutputOpt = Output.table) -> None:
    """Check schemas, duplicates and counts per hour; exit 1 if anything is wrong."""
    from analytics_lake.compaction import verify

    report = verify(_lake(config))
    if output is Output.json:
        render(report, output)
    else:
        render({k: v for k, v in report.items() if k != "per_hour"}, output)
    if not report["ok"]:
        raise typer.Exit(EXIT_FAILED)


@lake_app.command("writer")
@lake_errors
def writer_command(
    redis_url: Annotated[str | None, typer.Option("--redis-url", help="default: settings redis_url")] = None,
    stream: Annotated[str, typer.Option("--stream")] = DEFAULT_STREAM,
    group: Annotated[str, typer.Option("--group")] = DEFAULT_GROUP,
    consumer: Annotated[str | None, typer.Option("--consumer", help="default: writer-<hostname>")] = None,
    claim_idle_s: Annotated[float, typer.Option("--claim-idle-s", help="take over a dead writer's entries")] = 60.0,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Consume the usage stream into Parquet until SIGTERM/SIGINT, then print what it wrote."""
    import asyncio
    import signal
    import socket

    from analytics_lake.redis_stream import LakeWriter
    from gateway.usage import lake_config

    settings = load_cli_settings(config, redis_url=redis_url)
    if not settings.redis_url:
        raise CliError("no Redis configured: pass --redis-url or set FLEETGATE_REDIS_URL")
    name = consumer or f"writer-{socket.gethostname()}"
    writer = LakeWriter(settings.redis_url, lake_config(settings), stream=stream, group=group, consumer=name,
                        claim_idle_ms=int(claim_idle_s * 1000), flush_interval_s=settings.lake_flush_s,
                        batch_rows=settings.lake_flush_rows, rollups=settings.lake_rollups)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, writer.stop)
        await writer.run()

    asyncio.run(main())
    render({"consumer": name, "stream": stream, "group": group, "rows_written": writer.rows_written}, output)


# -- opsctl usage -----------------------------------------------------------------------------


class ReportKind(str, Enum):
    spend = "spend"
    latency = "latency"
    errors = "errors"


@usage_app.command("report")
@lake_errors
def report_command(
    kind: Annotated[ReportKind, typer.Argument(help="spend | latency | errors")],
    by: Annotated[str, typer.Option("--by", help="org|key|model|day (spend); model|endpoint (latency); "
                                                 "model|error_type (errors); comma-separated for several")] = "org",
    since: Annotated[str | None, typer.Option("--since", help="7d, 24h, 30m or YYYY-MM-DD")] = None,
    until: Annotated[str | None, typer.Option("--until", help="exclusive end: 1d, 12h or YYYY-MM-DD "
                                                              "(a date includes that day); default now")] = None,
    org: OrgOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
    gateway: GatewayOpt = None,
    admin_token: TokenOpt = None,
) -> None:
    """A canned usage report."""
    from analytics_lake.query import LakeQuery

    org = resolve_org(org, gateway, admin_token, config)
    with LakeQuery(_lake(config), org=org) as lake:
        report = getattr(lake, kind.value)
        render(_rows(report(by=by, since=since, until=until, org=org)), output)


@usage_app.command("export")
@lake_errors
def export_command(
    out: Annotated[Path, typer.Option("--out", help="file to write (.csv, .parquet, .sqlite/.db)")],
    month: Annotated[str | None, typer.Option("--month", help="YYYY-MM (UTC)")] = None,
    since: Annotated[str | None, typer.Option("--since", help="instead of --month: 30d, YYYY-MM-DD or an ISO "
                                                              "timestamp (inclusive)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="with --since: exclusive end (a date includes "
                                                              "that day); default now")] = None,
    org: OrgOpt = None,
    format: Annotated[str | None, typer.Option("--format", help="csv | parquet | sqlite (default: from --out's "
                                                                "suffix, else csv)")] = None,
    schema: Annotated[str, typer.Option("--schema", help="fleetgate (finance columns) | focus (FinOps FOCUS "
                                                         "columns)")] = "fleetgate",
    force: Annotated[bool, typer.Option("--force", help="replace --out if it exists")] = False,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
    gateway: GatewayOpt = None,
    admin_token: TokenOpt = None,
) -> None:
    """Spend per org × day × key × model × environment, exact to the micro-dollar (docs/exports.md).

    The file appears under --out only when complete (written to a temporary file beside it, then renamed).
    """
    import dataclasses

    from analytics_lake.exports import SUFFIX_FORMATS, spec_from_args
    from analytics_lake.query import LakeQuery

    # Everything typed is checked before the org lookup (a network call) and before any file is made.
    fmt = format if format is not None else SUFFIX_FORMATS.get(out.suffix.lower(), "csv")
    spec = spec_from_args(month=month, since=since, until=until, org=org, format=fmt, schema=schema)
    if out.is_dir():
        raise CliError(f"--out {out} is a directory: give a file name, e.g. {out / spec.filename()}")
    if not force and (out.exists() or out.is_symlink()):
        raise CliError(f"--out {out} already exists: pass --force to replace it")
    spec = dataclasses.replace(spec, org=resolve_org(org, gateway, admin_token, config))
    with LakeQuery(_lake(config), org=spec.org) as lake:
        result = _write_then_rename(lake, spec, out, force=force)
    summary = {"out": str(out), "format": spec.format, "schema": spec.schema, "org": spec.org,
               "since": spec.as_dict()["start"], "until": spec.as_dict()["end"], **result.as_dict()}
    if output is Output.json:
        render(summary, output)
    else:
        typer.echo(f"wrote {result.rows} rows ({result.requests} requests, {result.cost_usd} USD) to {out}")


def _write_then_rename(lake: Any, spec: Any, out: Path, *, force: bool) -> Any:
    """write_export into a temporary file in --out's directory, then rename it to --out (never a partial file
    under the final name; without --force, a file that appeared meanwhile is not replaced either)."""
    import errno
    import os
    import tempfile

    from analytics_lake.exports import write_export
    from analytics_lake.writer import fsync_dir

    directory = out.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=directory)
    except OSError as e:
        raise CliError(f"cannot write {out}: {e.strerror}", EXIT_FAILED) from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        result = write_export(lake, spec, tmp)
        os.chmod(tmp, _new_file_mode(out))  # mkstemp made it private; a plain file is what was asked for
        if force:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)  # fails if --out appeared meanwhile: no silent overwrite
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                if out.exists():  # a filesystem without hard links: check, then rename
                    raise FileExistsError(errno.EEXIST, "exists") from e
                os.replace(tmp, out)
        fsync_dir(str(directory))
        return result
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise CliError(f"--out {out} already exists: pass --force to replace it") from e
        raise CliError(f"cannot write {out}: {e.strerror or e}", EXIT_FAILED) from e
    finally:
        tmp.unlink(missing_ok=True)


def _new_file_mode(out: Path) -> int:
    """The mode of the file being replaced, else what open() would give a new file (0666 less the umask)."""
    import os
    import stat

    try:
        return stat.S_IMODE(out.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


# -- opsctl sql -------------------------------------------------------------------------------


class SqlFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@lake_errors
def sql_command(
    query: Annotated[str, typer.Argument(help="one read-only SELECT over the usage view")],
    format: Annotated[SqlFormat, typer.Option("--format", "-f", help="table | csv | json")] = SqlFormat.table,
    org: OrgOpt = None,
    config: ConfigOpt = None,
    gateway: GatewayOpt = None,
    admin_token: TokenOpt = None,
) -> None:
    """Read-only SQL over the usage lake. DuckDB over the `usage` view (with --org: only that org's rows)."""
    from analytics_lake.query import LakeQuery

    org = resolve_org(org, gateway, admin_token, config)
    with LakeQuery(_lake(config), org=org) as lake:
        table = lake.sql(query)
    if format is SqlFormat.csv:
        typer.echo(csv_text(table), nl=False)
    else:
        render(_rows(table), Output(format.value))


# Commands that live in their own modules register on lake_app when imported (after lake_app exists).
from opsctl.commands import lake_rollup, lake_status  # noqa: E402,F401
