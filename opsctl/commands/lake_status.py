"""`opsctl lake status`: how fresh the lake is, what waits in the spool, compactions and rollups.

A thin shell over `analytics_lake.freshness.lake_status`; pyarrow loads inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from opsctl.commands.lake import lake_app, lake_errors
from opsctl.common import ConfigOpt, Output, OutputOpt, decimal_text, load_cli_settings, render

_STALE_SHOWN = 5  # stale hours listed by name in the table view; json has them all


@lake_app.command("status")
@lake_errors
def status_command(config: ConfigOpt = None, output: OutputOpt = Output.table) -> None:
    """Newest event and lag, rows and files per day, spool backlog, compactions, rollup lag."""
    from analytics_lake.freshness import lake_status
    from gateway.usage import lake_config

    settings = load_cli_settings(config)
    status = lake_status(lake_config(settings), spool_root=Path(settings.state_dir) / "spool")
    if output is Output.json:
        render(status, output)
        return
    render(_summary(status), output, columns=["field", "value"])
    spool = [{**d, "oldest_segment_age_s": _seconds(d["oldest_segment_age_s"])} for d in status["spool"]]
    for title, rows in (("days", status["days"]), ("spool", spool)):
        if rows:
            typer.echo(f"\n{title}:")
            render(rows, output)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{decimal_text(round(value, 1))} s"


def _summary(status: dict[str, Any]) -> list[dict[str, str]]:
    rollups = status["rollup"]
    stale = rollups["stale"]
    stale_text = ", ".join(stale[:_STALE_SHOWN]) + (f" (+{len(stale) - _STALE_SHOWN} more)" if len(stale) > _STALE_SHOWN
                                                    else "")
    last = status["last_compaction"]
    backlog = status["spool"]
    fields = {
        "lake": status["lake"],
        "state": "empty" if status["empty"] else "ok" if not status["problems"] else "problems",
        "newest event": status["newest_event"] or "-",
        "lag": _seconds(status["lag_s"]),
        "files": str(status["files"]),
        "rows": str(status["rows"]),
        "uncompacted hours": str(status["uncompacted_hours"]),
        "pending compactions": ", ".join(status["pending_compactions"]) or "none",
        "last compaction": "never recorded" if last is None else (
            f"{last.get('finished_at')}: {last.get('hours_compacted', 0)} hours, "
            f"{last.get('files_merged', 0)} files merged"),
        "rollups": f"{rollups['rolled_up']} of {rollups['closed_hours']} closed hours rolled up",
        "rollup lag": _seconds(status["rollup_lag_s"]),
        "stale rollup hours": stale_text or "none",
        "spool backlog": (f"{sum(d['segments'] for d in backlog)} segments, {sum(d['bytes'] for d in backlog)} bytes "
                          f"in {len(backlog)} writer dirs") if backlog else "none",
        "checked at": status["checked_at"],
    }
    rows = [{"field": k, "value": v} for k, v in fields.items()]
    rows += [{"field": "problem", "value": p} for p in status["problems"]]
    return rows
