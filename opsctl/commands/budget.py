"""`opsctl budget …`: spend limits per org (or key), their live status, rebuild from the lake."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from opsctl.client import path_part
from opsctl.common import (
    NUMERIC_ARGS,
    ConfigOpt,
    GatewayOpt,
    Output,
    OutputOpt,
    TokenOpt,
    admin_client,
    decimal_text,
    fail,
    handle_errors,
    new_app,
    render,
)

budget_app = new_app("Budgets (USD per day, month or in total).")


class Period(str, Enum):
    daily = "daily"
    monthly = "monthly"
    total = "total"


@budget_app.command("set", context_settings=NUMERIC_ARGS)
@handle_errors
def budget_set(
    org: Annotated[str, typer.Argument(help="organization name or id")],
    usd: Annotated[float, typer.Argument(help="limit in USD")],
    period: Annotated[Period, typer.Option("--period")] = Period.monthly,
    soft_limit_pct: Annotated[int, typer.Option("--soft-limit-pct", help="alert threshold, % of the limit")] = 80,
    key: Annotated[str | None, typer.Option("--key", help="budget one key of the org instead")] = None,
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create or replace the budget of an org (or of one of its keys)."""
    if not 0 <= usd < float("inf"):  # also refuses NaN
        fail(f"USD must be >= 0, got {decimal_text(usd)}")
    if not 0 <= soft_limit_pct <= 100:
        fail(f"--soft-limit-pct must be between 0 and 100, got {soft_limit_pct}")
    body = {"org": org, "usd": usd, "period": period.value, "soft_limit_pct": soft_limit_pct, "key_id": key}
    with admin_client(gateway, admin_token, config) as client:
        render(client.put("/admin/v1/budgets", body), output,
               columns=("id", "org_id", "key_id", "limit_usd", "period", "soft_limit_pct"))


@budget_app.command("show")
@handle_errors
def budget_show(org: str, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Limit, spent, reserved, remaining and reset time of an org's budgets."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.get(f"/admin/v1/budgets/{path_part(org)}"), output,
               columns=("org", "key_id", "period", "limit_usd", "spent_usd", "reserved_usd", "remaining_usd",
                        "resets_at", "soft_limit_hit"))


@budget_app.command("rebuild")
@handle_errors
def budget_rebuild(org: Annotated[str | None, typer.Option("--org", help="organization name or id")] = None,
                   output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
                   config: ConfigOpt = None) -> None:
    """Recount the current period's spend from the usage lake.

    The gateway does this by itself at start-up and after Redis lost its data.
    """
    with admin_client(gateway, admin_token, config) as client:
        render(client.post("/admin/v1/budgets/rebuild", {"org": org} if org else {}), output)
