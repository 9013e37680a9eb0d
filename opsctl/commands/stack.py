"""`opsctl up` and `opsctl gateway serve`: running Fleetgate."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from opsctl.common import ConfigOpt, fail, handle_errors, load_cli_settings

gateway_app = typer.Typer(help="The gateway server.", no_args_is_help=True)


@gateway_app.command("serve")
@handle_errors
def gateway_serve(
    host: Annotated[str | None, typer.Option("--host")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="processes sharing the port")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the gateway (production entry point)."""
    if workers is not None and workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    settings = load_cli_settings(config, host=host, port=port, workers=workers)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gateway.http.server import serve

    serve(settings)


@handle_errors
def up_command(
    port: Annotated[int | None, typer.Option("--port", help="gateway port (default 8080)")] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="local state (default ./.fleetgate)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the embedded stack: SQLite store, gateway, simulated vLLM pods, local lake."""
    settings = load_cli_settings(config, port=port, state_dir=state_dir)
    from opsctl.up import run_up

    raise typer.Exit(run_up(settings))
