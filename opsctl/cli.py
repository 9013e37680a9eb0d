"""opsctl: the Fleetgate operator CLI. Each area is a sub-app in opsctl/commands/.

Command modules import only typer and opsctl.common at module level; aiohttp, DuckDB,
pyarrow, Redis and the gateway load inside the commands that use them (start-up ≤ 0.3 s).
"""

from __future__ import annotations

import typer

from opsctl.commands import (
    audit,
    bench,
    budget,
    config,
    deployment,
    identity,
    lake,
    orgs,
    registry,
    rollout,
    sim,
    slo,
    stack,
    store,
    tui,
)
from opsctl.common import OpsctlGroup

app = typer.Typer(
    name="opsctl",
    help="Operate Fleetgate: the gateway, registry, keys, budgets, usage lake and rollouts.",
    cls=OpsctlGroup,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("up")(stack.up_command)
app.add_typer(stack.gateway_app, name="gateway")
app.add_typer(orgs.org_app, name="org")
app.add_typer(orgs.key_app, name="key")
app.add_typer(registry.registry_app, name="registry")
app.add_typer(deployment.deployment_app, name="deployment")
app.add_typer(rollout.rollout_app, name="rollout")
app.command("promote")(rollout.promote_command)
app.command("rollback")(rollout.rollback_command)
app.add_typer(rollout.playbook_app, name="playbook")
app.add_typer(budget.budget_app, name="budget")
app.add_typer(store.store_app, name="store")
app.add_typer(sim.app, name="sim")
app.command("bench")(bench.bench_command)
app.add_typer(lake.lake_app, name="lake")
app.add_typer(lake.usage_app, name="usage")
app.add_typer(slo.slo_app, name="slo")
app.command("sql")(lake.sql_command)
app.command("tui")(tui.tui_command)
app.add_typer(identity.user_app, name="user")
app.add_typer(identity.service_account_app, name="service-account")
app.add_typer(audit.audit_app, name="audit")
# Issue 12 registers here: identity.login_command ("login"), identity.whoami_command ("whoami"),
# config.apply_command ("apply"), config.export_command ("export"), config.reconcile_command ("reconcile").
app.command("login")(identity.login_command)
app.command("logout")(identity.logout_command)
app.command("whoami")(identity.whoami_command)
app.add_typer(identity.oauth_app, name="oauth")
app.command("apply")(config.apply_command)
app.command("export")(config.export_command)
app.command("reconcile")(config.reconcile_command)


def main() -> None:
    app(prog_name="opsctl")
