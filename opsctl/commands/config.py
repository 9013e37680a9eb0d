"""`opsctl apply`, `opsctl export`, `opsctl reconcile`: the fleet's configuration as YAML files (in git).

The work is in opsctl/declarative/; these commands parse options, call it, and print the result.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from opsctl.common import (
    EXIT_FAILED,
    ConfigOpt,
    GatewayOpt,
    Output,
    OutputOpt,
    TokenOpt,
    admin_client,
    fail,
    handle_errors,
    render,
)

if TYPE_CHECKING:
    from opsctl.declarative.reconcile import Event
    from opsctl.declarative.run import Result
    from opsctl.declarative.source import ConfigInvalid

SecretsOutOpt = Annotated[Path | None, typer.Option(
    "--secrets-out", help="append the secrets of created keys and service accounts to FILE (JSON lines, mode 0600); "
                          "without it they are shown once on a terminal, and refused when stdout is not one")]
PruneOpt = Annotated[bool, typer.Option("--prune", help="remove objects this config owns but no longer declares")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="print the plan and change nothing")]


def invalid(error: ConfigInvalid) -> None:
    """Every problem on its own line (file:line: field: why), then the one-line verdict; exit 2."""
    for line in error.lines():
        typer.echo(line, err=True)
    fail(f"{len(error.problems)} problem(s) in the config; nothing was changed")


def report(result: Result, output: Output) -> None:
    """The plan (or the applied changes) on stdout; refusals on stderr with exit 1."""
    if output is Output.json:
        render(result.to_dict(), output)
    else:
        for line in result.lines():
            typer.echo(line)
        if result.shown_secrets:
            typer.echo("\nsecrets (shown once, store them now):")
            for line in result.secret_lines():
                typer.echo(f"  {line}")
    errors = result.errors()
    if errors:
        for line in errors[:-1]:
            typer.echo(f"error: {line}", err=True)
        fail(errors[-1], EXIT_FAILED)


@handle_errors
def apply_command(
    filename: Annotated[Path, typer.Option("--filename", "-f", help="config file, or a directory of *.yaml files")],
    dry_run: DryRunOpt = False,
    prune: PruneOpt = False,
    secrets_out: SecretsOutOpt = None,
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Make the gateway match a config: print the diff per object and field, then apply it."""
    from opsctl.declarative.apply import SecretSink
    from opsctl.declarative.run import apply_config
    from opsctl.declarative.schema import load
    from opsctl.declarative.source import ConfigInvalid

    try:
        desired = load(filename)
        with admin_client(gateway, admin_token, config) as client:
            result = apply_config(client, desired, prune=prune, dry_run=dry_run, secrets=SecretSink(secrets_out),
                                  terminal=sys.stdout.isatty())
    except ConfigInvalid as e:
        invalid(e)
        return
    report(result, output)


@handle_errors
def export_command(
    out: Annotated[Path | None, typer.Option("--out", help="write the config to FILE (default: stdout)")] = None,
    owner: Annotated[str | None, typer.Option(
        "--owner", help="only the objects this config owner owns, labelled with it (default: every object, "
                        "labelled 'default')")] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="table: YAML for people; json: the same "
                                           "document as JSON (apply reads both)")] = Output.table,
    gateway: GatewayOpt = None, admin_token: TokenOpt = None, config: ConfigOpt = None,
) -> None:
    """Write today's state as a config file (no secrets) that applies back with "no changes"."""
    from opsctl.declarative import state
    from opsctl.declarative.export import dump, export_config
    from opsctl.declarative.schema import NAME_RE

    if owner is not None and not NAME_RE.fullmatch(owner):
        fail(f"--owner {owner[:64]!r} must be 1-64 letters, digits, '.', '_' or '-'")
    with admin_client(gateway, admin_token, config) as client:
        text = dump(export_config(state.fetch(client), owner), as_json=output is Output.json)
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text)
    except OSError as e:
        fail(f"cannot write {out}: {e.strerror}", EXIT_FAILED)
    typer.echo(f"wrote {out}", err=True)


def _print_event(event: Event, output: Output) -> None:
    """One reconcile event: a JSON line, or the commit's plan as `apply` prints it (problems on stderr)."""
    import json

    if output is Output.json:
        typer.echo(json.dumps(event.to_dict(), default=str))
        return
    short = (event.commit or "")[:12] or "-"
    failed = event.kind in ("invalid", "error")
    typer.echo(f"commit {short}: {event.kind}" + (f": {event.message}" if event.message else ""), err=failed)
    for line in event.problems:
        typer.echo(f"  {line}", err=True)
    if event.result is not None:
        for line in event.result.lines():
            typer.echo(f"  {line}")
        for line in event.result.secret_lines():
            typer.echo(f"  secret (shown once): {line}")


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM end the loop after the current apply (never halfway through one)."""
    import signal

    def handler(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@handle_errors
def reconcile_command(
    repo: Annotated[str, typer.Option("--repo", help="the config repository: a local path or a URL git can reach")],
    branch: Annotated[str, typer.Option("--branch", help="branch to follow")] = "main",
    path: Annotated[str | None, typer.Option("--path", help="directory of the config inside the repository")] = None,
    interval: Annotated[str, typer.Option("--interval", help="how often to fetch, e.g. 60s, 5m")] = "60s",
    once: Annotated[bool, typer.Option("--once", help="fetch and apply once, then exit (1 if that commit fails)")]
        = False,
    prune: PruneOpt = False,
    dry_run: DryRunOpt = False,
    secrets_out: SecretsOutOpt = None,
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Follow a git branch: apply each new commit's config (the commit is recorded in the audit log)."""
    from analytics_lake.errors import LakeInputError
    from analytics_lake.report_args import parse_duration
    from opsctl.client import find_gateway_url
    from opsctl.common import load_cli_settings
    from opsctl.declarative.reconcile import Checkout, Reconciler, Target

    try:
        interval_s = parse_duration(interval, argument="interval").total_seconds()
    except LakeInputError as e:
        fail(str(e))
    settings = load_cli_settings(config)
    checkout = Checkout(Target.checked(repo, branch, path), Path(settings.state_dir) / "reconcile",
                        find_gateway_url(settings, gateway)[0])
    checkout.lock()
    try:
        checkout.check_remote()
        reconciler = Reconciler(checkout, lambda: admin_client(gateway, admin_token, config), prune=prune,
                                dry_run=dry_run, secrets_out=secrets_out, terminal=sys.stdout.isatty(),
                                report=lambda event: _print_event(event, output))
        stop = threading.Event()
        with _stop_on_signals(stop):
            code = reconciler.run(interval_s=interval_s, once=once, stop=stop)
    finally:
        checkout.unlock()
    raise typer.Exit(code)
