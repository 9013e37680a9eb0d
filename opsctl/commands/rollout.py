"""`opsctl rollout start|status|abort|resume`, `opsctl promote`, `opsctl rollback`, `opsctl playbook run`.

Thin shells over opsctl.rollout.engine: parse, build the admin client + deployer + progress display, call one
engine method, exit 0 (succeeded), 1 (failed, aborted, refused) or 2 (bad input). The engine, the deployers and
the playbook loader (PyYAML) load inside the commands, never at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from opsctl.commands.deployment import KubeconfigOpt, KubeContextOpt, NamespaceOpt
from opsctl.common import (
    ConfigOpt,
    GatewayOpt,
    Output,
    OutputOpt,
    TokenOpt,
    fail,
    handle_errors,
    new_app,
    render,
)

if TYPE_CHECKING:
    from opsctl.rollout.engine import Result, RolloutEngine
    from opsctl.rollout.playbook import Playbook

rollout_app = new_app("Rollouts: a new version beside stable, gated by analysis; resumable and abortable.")
playbook_app = new_app("Playbooks: rollouts, promotions and rollbacks described in YAML.")

EnvOpt = Annotated[str, typer.Option("--env", help="development, staging or production")]
OptionalEnvOpt = Annotated[str | None, typer.Option("--env", help="development, staging or production")]
IdOpt = Annotated[str | None, typer.Option("--id", help="rollout id (ro_…) instead of MODEL --env ENV")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="NAME=VALUE (a playbook param), values.A.B=VALUE or analysis.FIELD=VALUE; repeatable")]
PlaybookOpt = Annotated[Path | None, typer.Option("--playbook", help="playbook file (default: the shipped one)")]
DeployerOpt = Annotated[str | None, typer.Option(
    "--deployer", envvar="FLEETGATE_DEPLOYER",
    help="local or helm (default: the playbook's, else local; resume/abort: the rollout's)")]
StateDirOpt = Annotated[Path | None, typer.Option(
    "--state-dir", help="local state: the local deployer's process logs, the `opsctl up` gateway URL and token "
                        "(default $FLEETGATE_STATE_DIR, else ./.fleetgate)")]

STATUS_COLUMNS = ("id", "model", "environment", "version", "kind", "status", "step", "phase", "updated_at")
EVENT_COLUMNS = ("ts", "step", "name", "phase", "message")


class Where:
    """Where the commands act: the gateway (admin API) and the deployer's target (helm flags)."""

    def __init__(self, gateway: str | None, admin_token: str | None, config: str | None, deployer: str | None,
                 kube_context: str | None, namespace: str | None, kubeconfig: Path | None,
                 state_dir: Path | None) -> None:
        self.gateway, self.admin_token, self.config = gateway, admin_token, config
        self.deployer, self.kube_context = deployer, kube_context
        self.namespace, self.kubeconfig = namespace, kubeconfig
        self.state_dir = state_dir

    def settings(self):  # noqa: ANN201 - Settings
        from opsctl.common import load_cli_settings

        return load_cli_settings(self.config, state_dir=self.state_dir)

    def client(self):  # noqa: ANN201 - AdminClient
        from opsctl.client import AdminClient, find_admin_token, find_gateway_url

        settings = self.settings()
        url, source = find_gateway_url(settings, self.gateway)
        return AdminClient(url, find_admin_token(settings, self.admin_token, gateway_url=url), source=source)

    def engine(self, client: Any, kind: str | None, output: Output, steps: list[str] | None = None) -> RolloutEngine:
        """The engine over `client`, a deployer of `kind` (the --deployer flag wins), and the progress display."""
        from opsctl.client import find_admin_token
        from opsctl.deploy import DEFAULT_DEPLOYER, DeployerOptions, make_deployer
        from opsctl.rollout.engine import RolloutEngine
        from opsctl.rollout.progress import make_progress

        settings = self.settings()
        options = DeployerOptions(kubeconfig=self.kubeconfig, kube_context=self.kube_context,
                                  namespace=self.namespace, state_dir=Path(settings.state_dir),
                                  gateway_url=client.base_url,
                                  admin_token=find_admin_token(settings, self.admin_token,
                                                               gateway_url=client.base_url))
        deployer = make_deployer(self.deployer or kind or DEFAULT_DEPLOYER, options)
        progress = make_progress(output.value, total_steps=len(steps) if steps else None, steps=steps)
        return RolloutEngine(client, deployer, progress)


def _kinds(book: Playbook) -> list[str]:
    return [step.kind for step in book.steps]


def _finish(result: Result) -> None:
    """The result was shown by the progress display; the exit code says how it ended."""
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _load(path: Path, sets: list[str] | None, config: str | None = None, **params: Any) -> Playbook:
    """The playbook, its SLO gates from the SLO targets (`opsctl slo`: --config's slo_file, else built in)."""
    from opsctl.commands.slo import slo_book
    from opsctl.rollout.playbook import load_playbook

    return load_playbook(path, sets or (), params=params, slos=slo_book(config))


def _default(kind: str) -> Path:
    from opsctl.rollout.playbook import default_playbook

    return default_playbook(kind)


def _find_rollout(client: Any, model: str | None, env: str | None, rollout_id: str | None, *,
                  active: bool) -> dict[str, Any]:
    """The rollout named by --id, else the model's active (or newest) one in the environment.

    Raises:
        CliError: neither given, or nothing found (exit 2).
    """
    from gateway.errors import FleetgateError
    from opsctl.client import path_part
    from opsctl.deploy import check_environment

    if rollout_id:
        try:
            return client.get(f"/admin/v1/rollouts/{path_part(rollout_id)}")
        except FleetgateError as e:
            if e.status == 404:
                fail(f"unknown rollout {rollout_id!r} (see opsctl rollout status)")
            raise
    if not model or not env:
        fail("name the rollout: MODEL --env ENV, or --id ID")
    check_environment(env)
    found = client.get("/admin/v1/rollouts", model=model, env=env, active="true" if active else None, limit=1)
    if not found:
        fail(f"no {'active ' if active else ''}rollout of {model} in {env} (see opsctl rollout status)")
    return found[0]


# --- rollout ------------------------------------------------------------------------------------------------


@rollout_app.command("start")
@handle_errors
def rollout_start(
    model: str, env: EnvOpt,
    version: Annotated[str, typer.Option("--version", help="the version label of the new release")],
    playbook: PlaybookOpt = None, set_: SetOpt = None, deployer: DeployerOpt = None,
    kube_context: KubeContextOpt = None, namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None,
    state_dir: StateDirOpt = None, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
    admin_token: TokenOpt = None, config: ConfigOpt = None,
) -> None:
    """Roll VERSION of MODEL out in ENV: canary beside stable, smoke, shadow, weight steps with analysis,
    finalize; any failed gate rolls back (exit 1)."""
    from opsctl.deploy import check_environment

    check_environment(env)
    book = _load(playbook or _default("canary"), set_, config, model=model, env=env, version=version,
                 deployer=deployer)
    if book.kind not in ("canary", "blue-green"):
        fail(f"rollout start runs canary and blue-green playbooks; {book.path} is a {book.kind} playbook "
             f"(use opsctl playbook run)")
    where = Where(gateway, admin_token, config, deployer, kube_context, namespace, kubeconfig, state_dir)
    with where.client() as client:
        _finish(where.engine(client, book.deployer, output, _kinds(book)).start(book))


@rollout_app.command("resume")
@handle_errors
def rollout_resume(
    model: Annotated[str | None, typer.Argument()] = None, env: OptionalEnvOpt = None, rollout_id: IdOpt = None,
    force: Annotated[bool, typer.Option("--force", help="take over even if another live process drives it")] = False,
    deployer: DeployerOpt = None, kube_context: KubeContextOpt = None, namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None, state_dir: StateDirOpt = None, output: OutputOpt = Output.table,
    gateway: GatewayOpt = None, admin_token: TokenOpt = None, config: ConfigOpt = None,
) -> None:
    """Drive an interrupted rollout on from the step it was in (or finish its rollback)."""
    where = Where(gateway, admin_token, config, deployer, kube_context, namespace, kubeconfig, state_dir)
    with where.client() as client:
        rollout = _find_rollout(client, model, env, rollout_id, active=True)
        spec = rollout.get("spec") or {}
        engine = where.engine(client, (spec.get("params") or {}).get("deployer"), output,
                              [s.get("kind", "?") for s in spec.get("steps") or ()])
        _finish(engine.resume(rollout["id"], force=force))


@rollout_app.command("abort")
@handle_errors
def rollout_abort(
    model: Annotated[str | None, typer.Argument()] = None, env: OptionalEnvOpt = None, rollout_id: IdOpt = None,
    deployer: DeployerOpt = None, kube_context: KubeContextOpt = None, namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None, state_dir: StateDirOpt = None, output: OutputOpt = Output.table,
    gateway: GatewayOpt = None, admin_token: TokenOpt = None, config: ConfigOpt = None,
) -> None:
    """Stop a rollout and roll it back (its driver does it; with no live driver, this command does).
    Exit 0 once it ended aborted."""
    where = Where(gateway, admin_token, config, deployer, kube_context, namespace, kubeconfig, state_dir)
    with where.client() as client:
        rollout = _find_rollout(client, model, env, rollout_id, active=True)
        spec = rollout.get("spec") or {}
        engine = where.engine(client, (spec.get("params") or {}).get("deployer"), output,
                              [s.get("kind", "?") for s in spec.get("steps") or ()])
        result = engine.abort(rollout["id"])
        if result.status != "aborted":
            raise typer.Exit(1)


@rollout_app.command("status")
@handle_errors
def rollout_status(
    model: Annotated[str | None, typer.Argument()] = None, env: OptionalEnvOpt = None, rollout_id: IdOpt = None,
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A rollout with its events (MODEL --env ENV: the newest; --id), or the newest rollouts (no arguments)."""
    from opsctl.common import admin_client

    with admin_client(gateway, admin_token, config) as client:
        if model is None and rollout_id is None:
            rollouts = client.get("/admin/v1/rollouts", env=env, limit=20)
            if output is Output.json:
                render(rollouts, output)
            else:  # steps counted from 1, as in the progress display
                render([{**r, "step": r["step"] + 1} for r in rollouts], output, columns=STATUS_COLUMNS)
            return
        rollout = _find_rollout(client, model, env, rollout_id, active=False)
        if "events" not in rollout:
            from opsctl.client import path_part

            rollout = client.get(f"/admin/v1/rollouts/{path_part(rollout['id'])}")
    if output is Output.json:
        render(rollout, output)
        return
    _print_status(rollout)


def _print_status(rollout: dict[str, Any]) -> None:
    steps = (rollout.get("spec") or {}).get("steps") or []
    step = rollout.get("step") or 0
    current = steps[step]["kind"] if 0 <= step < len(steps) else "?"
    owner = rollout.get("owner") or {}
    lines = [("rollout", rollout["id"]), ("model", f"{rollout['model']} in {rollout['environment']}"),
             ("version", str(rollout["version"])), ("kind", f"{rollout['kind']} ({rollout.get('playbook')})"),
             ("status", rollout["status"] + (f": {rollout['reason']}" if rollout.get("reason") else "")),
             ("step", f"{step + 1}/{len(steps)} {current} ({rollout.get('phase')})"),
             ("driver", f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "none"),
             ("updated", str(rollout.get("updated_at")))]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        typer.echo(f"{key.ljust(width)}  {value}")
    events = rollout.get("events") or []
    if events:
        typer.echo("")
        render([{**e, "step": e["step"] + 1} for e in events], Output.table, columns=EVENT_COLUMNS)


# --- promote, rollback, playbook run --------------------------------------------------------------------------


@handle_errors
def promote_command(
    model: str,
    source: Annotated[str, typer.Option("--from", help="environment whose stable release is promoted")] = "staging",
    target: Annotated[str, typer.Option("--to", help="environment it goes to")] = "production",
    approve: Annotated[bool, typer.Option("--approve", help="the manual gate production needs")] = False,
    playbook: PlaybookOpt = None, set_: SetOpt = None, deployer: DeployerOpt = None,
    kube_context: KubeContextOpt = None, namespace: NamespaceOpt = None, kubeconfig: KubeconfigOpt = None,
    state_dir: StateDirOpt = None, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
    admin_token: TokenOpt = None, config: ConfigOpt = None,
) -> None:
    """Promote the version (and values) that serve --from to --to, through a canary there. Refused (exit 1)
    unless the source release is deployed, ready, healthy and its newest rollout succeeded."""
    from opsctl.deploy import check_environment
    from opsctl.rollout.promotion import require_approval

    check_environment(source)
    check_environment(target)
    require_approval(target, approve)  # before anything is touched
    book = _load(playbook or _default("promote"), set_, config, model=model, deployer=deployer, approve=approve,
                 **{"from": source, "to": target})
    where = Where(gateway, admin_token, config, deployer, kube_context, namespace, kubeconfig, state_dir)
    _run_promote(book, where, output)


def _run_promote(book: Playbook, where: Where, output: Output) -> None:
    from opsctl.rollout.promotion import promote, require_approval

    if book.kind != "promote":
        fail(f"{book.path} is a {book.kind} playbook, not a promote one")
    require_approval(book.environment, bool(book.params.get("approve")))
    with where.client() as client:
        _finish(promote(where.engine(client, book.deployer, output, _kinds(book)), book))


@handle_errors
def rollback_command(
    model: str, env: EnvOpt,
    to_revision: Annotated[int | None, typer.Option("--to-revision", help="revision to return to "
                                                                         "(default: the previous one)")] = None,
    deployer: DeployerOpt = None, kube_context: KubeContextOpt = None, namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None, state_dir: StateDirOpt = None, output: OutputOpt = Output.table,
    gateway: GatewayOpt = None, admin_token: TokenOpt = None, config: ConfigOpt = None,
) -> None:
    """Roll MODEL back in ENV: abort its active rollout, else return its stable release to an earlier revision
    and move the registry to it (no request fails)."""
    from opsctl.deploy import check_environment

    check_environment(env)
    if to_revision is not None and to_revision < 1:
        fail(f"--to-revision must be a revision number >= 1, got {to_revision}")
    where = Where(gateway, admin_token, config, deployer, kube_context, namespace, kubeconfig, state_dir)
    _run_rollback(model, env, to_revision, where, output)


def _run_rollback(model: str, env: str, to_revision: int | None, where: Where, output: Output,
                  kind: str | None = None) -> None:
    with where.client() as client:
        result = where.engine(client, kind, output).rollback_release(model, env, to_revision)
    if result.status not in ("succeeded", "aborted"):
        raise typer.Exit(1)


@playbook_app.command("run")
@handle_errors
def playbook_run(
    file: Annotated[Path, typer.Argument(help="playbook YAML (see playbooks/README.md)")],
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan; change nothing")] = False,
    deployer: DeployerOpt = None, kube_context: KubeContextOpt = None, namespace: NamespaceOpt = None,
    kubeconfig: KubeconfigOpt = None, state_dir: StateDirOpt = None, output: OutputOpt = Output.table,
    gateway: GatewayOpt = None, admin_token: TokenOpt = None, config: ConfigOpt = None,
) -> None:
    """Run a canary, blue-green, promote or rollback playbook (params with --set NAME=VALUE)."""
    from opsctl.rollout.playbook import plan, summary

    book = _load(file, set_, config, deployer=deployer)
    if dry_run:
        if output is Output.json:
            render({"summary": summary(book), "plan": plan(book), "spec": book.to_spec()}, output)
        else:
            typer.echo(summary(book))
            for line in plan(book):
                typer.echo(line)
        return
    where = Where(gateway, admin_token, config, deployer, kube_context, namespace, kubeconfig, state_dir)
    if book.kind == "promote":
        _run_promote(book, where, output)
    elif book.kind == "rollback":
        to_revision = book.steps[0].args.get("to_revision")
        _run_rollback(book.model, str(book.params["env"]), to_revision, where, output, book.deployer)
    else:
        with where.client() as client:
            _finish(where.engine(client, book.deployer, output, _kinds(book)).start(book))
