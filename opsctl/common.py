"""Shared CLI plumbing: sub-app factory, --output, rendering, org names, one-line errors and exit codes.

Exit codes: 0 success, 1 a failed operation, 2 bad usage or bad input. Imports stay light
(typer, stdlib, gateway.errors): every `opsctl` invocation pays for this module.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from gateway.errors import FleetgateError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# Let "-5" reach a command's own validation as a value instead of failing as an unknown option;
# every command with a numeric positional argument uses it (a test checks that).
NUMERIC_ARGS: dict[str, Any] = {"ignore_unknown_options": True}
ORG_ID = re.compile(r"org_[0-9a-f]{16}")  # what gateway/store/ids.py makes


class Output(str, Enum):
    table = "table"
    json = "json"


OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table for people, json for scripts")]
ConfigOpt = Annotated[str | None, typer.Option("--config", help="TOML settings file (default ./fleetgate.toml)")]
GatewayOpt = Annotated[str | None, typer.Option(
    "--gateway", help="gateway URL (default $FLEETGATE_GATEWAY_URL, else the one `opsctl up` recorded "
                      "in the state dir, else http://127.0.0.1:8080)")]
TokenOpt = Annotated[str | None, typer.Option(
    "--admin-token", help="admin token (default $FLEETGATE_ADMIN_TOKEN, else the state dir's)")]


class CliError(Exception):
    """An error the CLI prints in one line and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_USAGE) -> None:
    raise CliError(message, exit_code)


def _click_exceptions() -> Any:
    try:
        from typer._click import exceptions  # typer >= 0.24 vendors click
    except ImportError:  # pragma: no cover - older typer runs on click itself
        from click import exceptions
    return exceptions


class OpsctlGroup(TyperGroup):
    """The root command: usage errors are one line on stderr (exit 2), like every other error."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        exceptions = _click_exceptions()
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except getattr(exceptions, "NoArgsIsHelpError", ()) as e:
            e.show()  # a bare group: its help is the answer
            sys.exit(EXIT_USAGE)
        except exceptions.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            typer.echo(f"error: {' '.join(e.format_message().split())}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except exceptions.ClickException as e:
            typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(EXIT_FAILED)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def new_app(help: str, **kwargs: Any) -> typer.Typer:
    """A Typer (sub-)app with opsctl's conventions: plain help (no `<bool>` type column, no rich
    import at start-up), help when called bare, no completion install commands."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None, add_completion=False,
                       pretty_exceptions_enable=False, **kwargs)


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


def listen_error(error: OSError, host: str, port: int) -> CliError | None:
    """A failed listen on host:port as one readable line (exit 1); None for other OS errors."""
    if error.errno == errno.EADDRINUSE:
        return CliError(f"port {port} on {host} is already in use; pick another with --port", EXIT_FAILED)
    if error.errno in (errno.EACCES, errno.EADDRNOTAVAIL):
        return CliError(f"cannot listen on {host}:{port}: {error.strerror}", EXIT_FAILED)
    return None


def decimal_text(value: float | Decimal) -> str:
    """A number as people write it: 0.000009, never 9e-06 (dollar amounts are often tiny)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        value = Decimal(repr(value))  # repr is the shortest exact round-trip of the float
    text = format(value, "f")
    return "0" if text in ("-0", "-0.0") else text


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float | Decimal):
        return decimal_text(value)
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


def load_cli_settings(config: str | None = None, **overrides: Any):  # noqa: ANN201 - Settings
    """Settings for a CLI command: TOML + env + flags; bad settings exit 2."""
    from gateway.errors import ConfigError
    from gateway.settings import load_settings

    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as e:
        raise CliError(e.message) from e


def admin_client(gateway: str | None, token: str | None, config: str | None = None):  # noqa: ANN201
    """An AdminClient for the gateway found by --gateway > env/TOML > state dir > default."""
    from opsctl.client import AdminClient, find_admin_token, find_gateway_url

    settings = load_cli_settings(config)
    url, source = find_gateway_url(settings, gateway)
    return AdminClient(url, find_admin_token(settings, token, gateway_url=url), source=source)


def resolve_org(org: str | None, gateway: str | None, token: str | None, config: str | None = None) -> str | None:
    """An org name or id from the command line → the org id the lake stores.

    Ids (`org_` + 16 hex) are used as given, so lake commands work without a gateway; names
    are looked up through the admin API.

    Raises:
        CliError: unknown org (exit 2), or a name while the gateway is unreachable (exit 1).
    """
    if org is None or ORG_ID.fullmatch(org):
        return org
    from opsctl.client import GatewayUnreachable, path_part

    try:
        with admin_client(gateway, token, config) as client:
            return client.get(f"/admin/v1/organizations/{path_part(org)}")["id"]
    except GatewayUnreachable as e:
        raise CliError(f"cannot look up the org named {org!r}: {e.message}; pass its id (org_…) instead",
                       EXIT_FAILED) from e
    except FleetgateError as e:
        if e.status == 404:
            raise CliError(f"unknown org {org!r}: no organization has this name or id "
                           "(see 'opsctl org list')") from e
        raise
