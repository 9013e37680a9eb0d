"""Shared CLI plumbing: the --output option, rendering, and one-line errors with exit codes.

Exit codes: 0 success, 1 a failed operation, 2 bad usage or bad input.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer

from gateway.errors import FleetgateError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class Output(str, Enum):
    table = "table"
    json = "json"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table for people, json for scripts")]
ConfigOpt = Annotated[str | None, typer.Option("--config", help="TOML settings file (default ./fleetgate.toml)")]


class CliError(Exception):
    """An error the CLI prints in one line and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_USAGE) -> None:
    raise CliError(message, exit_code)


F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn our errors into one line on stderr and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CliError as e:
            typer.echo(f"error: {e.message}", err=True)
            raise typer.Exit(e.exit_code) from e
        except FleetgateError as e:
            # 4xx: the input was wrong (exit 2); 5xx: the operation failed (exit 1)
            code = EXIT_USAGE if 400 <= e.status < 500 else EXIT_FAILED
            typer.echo(f"error: {e.message}", err=True)
            raise typer.Exit(code) from e

    return wrapper  # type: ignore[return-value]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def render(data: Any, output: Output, *, columns: Iterable[str] | None = None) -> None:
    """Print a dict or a list of dicts as JSON or as an aligned table."""
    if output is Output.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    if not rows:
        typer.echo("(none)")
        return
    if not isinstance(rows[0], dict):
        for row in rows:
            typer.echo(str(row))
        return
    cols = list(columns) if columns else list(rows[0].keys())
    table = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    typer.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip())
    for row in table:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


GatewayOpt = Annotated[str | None, typer.Option("--gateway", help="gateway URL (default $FLEETGATE_GATEWAY_URL)")]
TokenOpt = Annotated[str | None, typer.Option("--admin-token", help="admin token (default $FLEETGATE_ADMIN_TOKEN)")]


def load_cli_settings(config: str | None = None, **overrides: Any):  # noqa: ANN201 - Settings
    """Settings for a CLI command: TOML + env + flags; bad settings exit 2."""
    from gateway.errors import ConfigError
    from gateway.settings import load_settings

    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as e:
        raise CliError(e.message) from e


def admin_client(gateway: str | None, token: str | None, config: str | None = None):  # noqa: ANN201
    from opsctl.client import AdminClient, find_admin_token

    settings = load_cli_settings(config)
    return AdminClient(gateway or settings.gateway_url, find_admin_token(settings, token))
