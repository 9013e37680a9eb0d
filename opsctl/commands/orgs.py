"""`opsctl org …` and `opsctl key …`: organizations and API keys through the admin API."""

from __future__ import annotations

from typing import Annotated

import typer

from opsctl.client import path_part
from opsctl.common import (
    ConfigOpt,
    GatewayOpt,
    Output,
    OutputOpt,
    TokenOpt,
    admin_client,
    fail,
    handle_errors,
    new_app,
    render,
)

org_app = new_app("Organizations.")
key_app = new_app("API keys (the secret is shown once, at creation).")

ORG_COLUMNS = ("id", "name", "rpm_limit", "tpm_limit", "created_at")
KEY_COLUMNS = ("id", "org_id", "name", "prefix", "status", "rpm_limit", "tpm_limit", "allowed_models",
               "environment", "expires_at", "require_signature")


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        fail(f"{name} must be a positive integer, got {value}")
    return value


@org_app.command("create")
@handle_errors
def org_create(
    name: str,
    rpm: Annotated[int | None, typer.Option("--rpm", help="requests per minute for the whole org")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", help="tokens per minute for the whole org")] = None,
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create an organization."""
    body = {"name": name, "rpm_limit": _positive("--rpm", rpm), "tpm_limit": _positive("--tpm", tpm)}
    with admin_client(gateway, admin_token, config) as client:
        render(client.post("/admin/v1/organizations", body), output, columns=ORG_COLUMNS)


@org_app.command("list")
@handle_errors
def org_list(output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
             config: ConfigOpt = None) -> None:
    """List organizations."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.get("/admin/v1/organizations"), output, columns=ORG_COLUMNS)


@org_app.command("show")
@handle_errors
def org_show(name: str, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
             admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Show one organization (by name or id)."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.get(f"/admin/v1/organizations/{path_part(name)}"), output, columns=ORG_COLUMNS)


@key_app.command("create")
@handle_errors
def key_create(
    org: Annotated[str, typer.Option("--org", help="organization name or id")],
    name: Annotated[str, typer.Option("--name")] = "default",
    rpm: Annotated[int | None, typer.Option("--rpm", help="requests per minute for this key")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", help="tokens per minute for this key")] = None,
    models: Annotated[str | None, typer.Option("--models", help="comma-separated models this key may use")] = None,
    env: Annotated[str | None, typer.Option("--env", help="environment this key routes to")] = None,
    expires_in: Annotated[str | None, typer.Option("--expires-in", help="e.g. 30d, 12h")] = None,
    require_signature: Annotated[bool, typer.Option(
        "--require-signature", help="refuse bearer use: requests must be signed (docs/signed-requests.md)")] = False,
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create an API key; its secret is printed once and never stored."""
    allowed = [m.strip() for m in models.split(",") if m.strip()] if models else None
    if models is not None and not allowed:
        fail("--models must name at least one model")
    body = {"org": org, "name": name, "rpm_limit": _positive("--rpm", rpm), "tpm_limit": _positive("--tpm", tpm),
            "models": allowed, "environment": env, "expires_in": expires_in}
    if require_signature:  # only then: a gateway without signed requests still takes every other key
        body["require_signature"] = True
    with admin_client(gateway, admin_token, config) as client:
        created = client.post("/admin/v1/api-keys", body)
    if output is Output.json:
        render(created, output)
    else:
        render(created, output, columns=("id", "org_id", "name", "prefix", "expires_at", "require_signature"))
        typer.echo(f"\nAPI key (shown once, store it now): {created['key']}")
        if created.get("require_signature"):
            typer.echo(f"Signed requests only: sign with key id {created['id']} and a key derived from this "
                       "secret (docs/signed-requests.md).")


@key_app.command("list")
@handle_errors
def key_list(org: Annotated[str | None, typer.Option("--org", help="organization name or id")] = None,
             output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
             config: ConfigOpt = None) -> None:
    """List API keys (never their secrets)."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.get("/admin/v1/api-keys", org=org), output, columns=KEY_COLUMNS)


@key_app.command("revoke")
@handle_errors
def key_revoke(key_id: str, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
               admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Revoke a key; every gateway replica refuses it at once."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.post(f"/admin/v1/api-keys/{path_part(key_id)}/revoke"), output, columns=KEY_COLUMNS)
