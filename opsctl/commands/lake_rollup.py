"""`opsctl lake rollup [--rebuild]`: build the hourly rollups that canned reports read (analytics_lake/rollup.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from opsctl.commands.lake import _lake, lake_app, lake_errors
from opsctl.common import ConfigOpt, Output, OutputOpt, render


@lake_app.command("rollup")
@lake_errors
def rollup_command(
    rebuild: Annotated[bool, typer.Option("--rebuild", help="delete every rollup and build all again from the raw "
                                                            "files (idempotent)")] = False,
    status: Annotated[bool, typer.Option("--status", help="only show how far the rollups are behind")] = False,
    config: ConfigOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Build the rollups of closed hours that lack a current one (gateways and `lake writer` do this as they write).

    An hour is rolled up once it ended 2 minutes ago; whole days are packed once every hour of them is.
    Reports read rollups for whole hours and raw rows for the rest, so a missing rollup is only slower.
    """
    from analytics_lake import rollup
    from analytics_lake.errors import LakeInputError

    if rebuild and status:
        raise LakeInputError("--rebuild and --status are exclusive: pick one")
    lake = _lake(config)
    if status:
        report = rollup.status(lake)
        if output is Output.table:
            report = {**report, "stale": ", ".join(report["stale"][:10]) + (" …" if len(report["stale"]) > 10 else "")}
        render(report, output)
        return
    render(rollup.rebuild(lake) if rebuild else rollup.update(lake, _wait=True), output)
