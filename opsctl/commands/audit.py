"""`opsctl audit list|export`: the audit log of every admin change, through the admin API.

`list` shows one page, newest first (`--before-id` pages back); `export` streams every matching entry,
oldest first, as JSON lines or CSV to stdout or a file, in constant memory.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from opsctl.common import (
    EXIT_FAILED,
    CliError,
    ConfigOpt,
    GatewayOpt,
    Output,
    OutputOpt,
    TokenOpt,
    admin_client,
    handle_errors,
    new_app,
    render,
)

if TYPE_CHECKING:
    from opsctl.client import AdminClient

audit_app = new_app("The audit log: every admin change, who made it, before and after.")

LIST_COLUMNS = ("id", "ts", "actor", "action", "target", "org_id", "source", "detail")

ActorOpt = Annotated[str | None, typer.Option(
    "--actor", help='who made the change: user:alice, service_account:ci, bootstrap, gateway')]
ActionOpt = Annotated[str | None, typer.Option("--action", help="key.create, or a prefix ending in * like 'key.*'")]
TargetOpt = Annotated[str | None, typer.Option("--target", help="the changed object's id (or name)")]
OrgOpt = Annotated[str | None, typer.Option("--org", help="only this org's entries (name or id)")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="7d, 24h, 30m or YYYY-MM-DD")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="exclusive end: 1d, 12h or YYYY-MM-DD "
                                                               "(a date includes that day)")]


class ExportFormat(str, Enum):
    jsonl = "jsonl"
    csv = "csv"


def _filters(actor: str | None, action: str | None, target: str | None, org: str | None, since: str | None,
             until: str | None) -> dict[str, str | None]:
    """The query parameters the gateway checks (bad ones: one line naming the parameter, exit 2)."""
    return {"actor": actor, "action": action, "target": target, "org": org, "since": since, "until": until}


@audit_app.command("list")
@handle_errors
def list_command(
    actor: ActorOpt = None, action: ActionOpt = None, target: TargetOpt = None, org: OrgOpt = None,
    since: SinceOpt = None, until: UntilOpt = None,
    limit: Annotated[int, typer.Option("--limit", help="at most this many entries (1-1000)")] = 50,
    before_id: Annotated[int | None, typer.Option("--before-id", help="only entries older than this id: "
                                                                       "the next page's cursor")] = None,
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List audit entries, newest first.

    A full table page ends with the next page's --before-id, on stderr.
    """
    params: dict[str, Any] = {**_filters(actor, action, target, org, since, until), "limit": limit,
                              "before_id": before_id}
    with admin_client(gateway, admin_token, config) as client:
        entries = client.get("/admin/v1/audit", **params)
    render(entries, output, columns=LIST_COLUMNS)
    if output is Output.table and entries and len(entries) == limit:
        typer.echo(f"more: --before-id {entries[-1]['id']}", err=True)


@audit_app.command("export")
@handle_errors
def export_command(
    actor: ActorOpt = None, action: ActionOpt = None, target: TargetOpt = None, org: OrgOpt = None,
    since: SinceOpt = None, until: UntilOpt = None,
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="jsonl | csv")] = ExportFormat.jsonl,
    out: Annotated[Path | None, typer.Option("--out", help="file to write (default: stdout)")] = None,
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Export every matching entry, oldest first, as JSON lines or CSV.

    CSV has a header row; before, after and detail are JSON text. With --out, --output json prints
    {"out", "format", "entries"} once the file is complete.
    """
    params = {**_filters(actor, action, target, org, since, until), "format": format.value}
    with admin_client(gateway, admin_token, config) as client:
        if out is None:
            client.download("/admin/v1/audit/export", params, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            _export_to_file(client, params, out)
            entries = _count_entries(out, format)
            if output is Output.json:
                typer.echo(json.dumps({"out": str(out), "format": format.value, "entries": entries}))
            else:
                typer.echo(f"exported {entries} audit entries to {out}", err=True)


def _count_entries(path: Path, format: ExportFormat) -> int:
    """Entries in a finished export: one per line (JSON text has no raw newline), less CSV's header."""
    with path.open("rb") as f:
        lines = sum(1 for _ in f)
    return max(0, lines - 1) if format is ExportFormat.csv else lines


def _export_to_file(client: AdminClient, params: dict[str, Any], out: Path) -> None:
    """Write to a private temporary file beside `out`, renamed over it only once the export is complete."""
    try:
        fd, partial = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")  # mode 0600
    except OSError as e:
        raise CliError(f"cannot write {out}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as sink:
            client.download("/admin/v1/audit/export", params, sink)
        os.replace(partial, out)
    except OSError as e:
        Path(partial).unlink(missing_ok=True)
        raise CliError(f"cannot write {out}: {e.strerror}", EXIT_FAILED) from e
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
