"""`opsctl tui`: the live console (Textual). Textual loads only when the command runs."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from opsctl.common import ConfigOpt, GatewayOpt, TokenOpt, fail, handle_errors, load_cli_settings

MIN_REFRESH_S = 0.5
MAX_REFRESH_S = 60.0


class StartScreen(str, Enum):
    overview = "overview"
    registry = "registry"
    rollouts = "rollouts"
    usage = "usage"
    orgs = "orgs"


@handle_errors
def tui_command(
    gateway: GatewayOpt = None,
    admin_token: TokenOpt = None,
    config: ConfigOpt = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="hide and refuse every action that changes the fleet")] = False,
    refresh: Annotated[float, typer.Option("--refresh", help="seconds between refreshes of live data (0.5-60)")] = 2.0,
    screen: Annotated[StartScreen, typer.Option("--screen", help="the screen to open first")] = StartScreen.overview,
    record: Annotated[Path | None, typer.Option("--record", help="also write everything read to FILE (JSON lines)")] = None,
    replay: Annotated[Path | None, typer.Option("--replay", help="show a recording instead of a gateway (read-only)")] = None,
) -> None:
    """The live console: overview, registry, rollouts, usage (SQL) and orgs/keys/budgets."""
    if not MIN_REFRESH_S <= refresh <= MAX_REFRESH_S:
        fail(f"--refresh {refresh:g} is invalid: expected {MIN_REFRESH_S:g} to {MAX_REFRESH_S:g} seconds")
    if record is not None and replay is not None:
        fail("--record and --replay cannot be used together")
    settings = load_cli_settings(config)
    from tui.source import LiveSource, RecordingSource, ReplaySource

    replayed = ReplaySource(replay, settings) if replay is not None else None  # a bad file: exit 2 first
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        fail("opsctl tui needs a terminal (stdin and stdout are not a TTY); for scripts use the other opsctl commands")
    if replayed is not None:
        source = replayed
    elif record is not None:
        try:
            source = RecordingSource(settings, record, gateway, admin_token)
        except OSError as e:
            fail(f"--record {record}: cannot write it ({e.strerror})")
    else:
        source = LiveSource(settings, gateway, admin_token)
    from tui.app import FleetgateApp

    FleetgateApp(source, read_only=read_only, refresh_s=refresh, screen=screen.value).run()
