"""opsctl: the Fleetgate operator CLI. Each area is a sub-app in opsctl/commands/."""

from __future__ import annotations

import typer

from opsctl.commands import budget, orgs, registry, stack

app = typer.Typer(
    name="opsctl",
    help="Operate Fleetgate: the gateway, registry, keys, budgets, usage lake and rollouts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("up")(stack.up_command)
app.add_typer(stack.gateway_app, name="gateway")
app.add_typer(orgs.org_app, name="org")
app.add_typer(orgs.key_app, name="key")
app.add_typer(registry.registry_app, name="registry")
app.add_typer(budget.budget_app, name="budget")


def _mount_optional() -> None:
    """Areas built in their own modules."""
    from opsctl.commands import bench, lake, sim

    app.add_typer(sim.app, name="sim")
    app.command("bench")(bench.bench_command)
    app.add_typer(lake.lake_app, name="lake")
    app.add_typer(lake.usage_app, name="usage")
    app.command("sql")(lake.sql_command)


_mount_optional()


def main() -> None:
    app()
