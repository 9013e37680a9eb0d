"""`opsctl up` and `opsctl gateway serve`: running Fleetgate.

Both are servers: they print logs, not `--output` records (`up --output json` prints one JSON
object once the stack is ready, for scripts that start it). Start-up failures are one line, exit 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opsctl.common import (
    EXIT_FAILED,
    CliError,
    ConfigOpt,
    Output,
    OutputOpt,
    fail,
    handle_errors,
    listen_error,
    load_cli_settings,
    new_app,
)

gateway_app = new_app("The gateway server.")


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
    from analytics_lake.errors import LakeError
    from gateway.http.server import serve
    from gateway.observability.logging import setup_logging

    setup_logging(settings)

    try:
        serve(settings)
    except LakeError as e:  # e.g. the usage spool is locked by another gateway on this state dir and port
        raise CliError(str(e), EXIT_FAILED) from e
    except OSError as e:  # raised out of serve() when the listening socket cannot be opened
        error = listen_error(e, settings.host, settings.port)
        if error is None:
            raise
        raise error from e


@handle_errors
def up_command(
    port: Annotated[int | None, typer.Option("--port", help="gateway port (default 8080)")] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="local state (default ./.fleetgate)")] = None,
    output: OutputOpt = Output.table,
    config: ConfigOpt = None,
) -> None:
    """Run the embedded stack: store, gateway, pods, lake. A SQLite store, the gateway, simulated vLLM
    pods and a local lake, all in the state dir; Ctrl-C stops everything.

    Exits 1 if it cannot start (the state dir is used by a running `opsctl up`, the port is
    taken, a process failed), 2 on bad flags or settings.
    """
    settings = load_cli_settings(config, port=port, state_dir=state_dir)
    from opsctl.up import run_up

    raise typer.Exit(run_up(settings, json_output=output is Output.json))
