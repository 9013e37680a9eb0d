"""`opsctl user …`, `opsctl service-account …`, `opsctl oauth …`, `opsctl login`, `logout`, `whoami`.

Secrets (personal tokens, client secrets) are printed once, when made; `login` stores a token per
gateway in a private file (opsctl.credentials) that every command and the TUI then use.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from typing import Annotated, Any

import typer

from opsctl.common import (
    ConfigOpt,
    GatewayOpt,
    Output,
    OutputOpt,
    TokenOpt,
    admin_client,
    fail,
    handle_errors,
    load_cli_settings,
    new_app,
    render,
)

user_app = new_app("Users: people with a role (viewer < operator < admin), global or in one org.")
token_app = new_app("Personal admin tokens of a user (the secret is shown once, at creation).")
user_app.add_typer(token_app, name="token")
service_account_app = new_app("Service accounts: OAuth2 client-credentials clients for CI and automation.")
oauth_app = new_app("OAuth2 signing keys of the gateway's access tokens.")

USER_COLUMNS = ("id", "name", "role", "org_id", "status", "email", "created_at")
TOKEN_COLUMNS = ("id", "name", "prefix", "status", "expires_at", "last_used_at", "revoked_at")
ACCOUNT_COLUMNS = ("id", "name", "role", "org_id", "status", "client_id", "created_at")
SIGNING_KEY_COLUMNS = ("kid", "algorithm", "status", "created_at", "retired_at", "verifies_until")
LOGIN_COLUMNS = ("gateway_url", "kind", "name", "role", "org_id", "expires_at", "credentials")
CLIENT_ID_ENV = "FLEETGATE_CLIENT_ID"
CLIENT_SECRET_ENV = "FLEETGATE_CLIENT_SECRET"


class Role(str, Enum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"


OrgOpt = Annotated[str | None, typer.Option("--org", help="organization name or id (default: global)")]


def _part(value: str) -> str:
    from opsctl.client import path_part

    return path_part(value)


def _show_secret(created: dict[str, Any], output: Output, columns: tuple[str, ...], lines: dict[str, str]) -> None:
    """Print what was made; its secret(s) once, in the JSON or under the table."""
    render(created, output, columns=None if output is Output.json else columns)
    if output is Output.table:
        typer.echo("")
        for label, key in lines.items():
            typer.echo(f"{label}: {created[key]}")


# users ------------------------------------------------------------------------------------------

@user_app.command("create")
@handle_errors
def user_create(
    name: str,
    role: Annotated[Role, typer.Option("--role", help="viewer, operator or admin")],
    org: OrgOpt = None,
    email: Annotated[str | None, typer.Option("--email")] = None,
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create a user (in --org, or global)."""
    body = {"name": name, "role": role.value, "org": org, "email": email}
    with admin_client(gateway, admin_token, config) as client:
        render(client.post("/admin/v1/users", {k: v for k, v in body.items() if v is not None}), output,
               columns=USER_COLUMNS)


@user_app.command("list")
@handle_errors
def user_list(org: OrgOpt = None, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
              admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """List users (of one org with --org)."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.get("/admin/v1/users", org=org), output, columns=USER_COLUMNS)


@user_app.command("show")
@handle_errors
def user_show(name: str, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
              admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Show one user (by name or id)."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.get(f"/admin/v1/users/{_part(name)}"), output, columns=USER_COLUMNS)


def _patch(collection: str, columns: tuple[str, ...], name: str, change: dict[str, str], output: Output,
           gateway: str | None, token: str | None, config: str | None) -> None:
    """PATCH one user or service account (`collection`: users | service-accounts) and show the result."""
    with admin_client(gateway, token, config) as client:
        render(client.patch(f"/admin/v1/{collection}/{_part(name)}", change), output, columns=columns)


def _patch_user(name: str, change: dict[str, str], output: Output, gateway: str | None, token: str | None,
                config: str | None) -> None:
    _patch("users", USER_COLUMNS, name, change, output, gateway, token, config)


@user_app.command("disable")
@handle_errors
def user_disable(name: str, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                 admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Disable a user: its personal tokens are refused at once."""
    _patch_user(name, {"status": "disabled"}, output, gateway, admin_token, config)


@user_app.command("enable")
@handle_errors
def user_enable(name: str, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Enable a disabled user again (its unexpired, unrevoked tokens work again)."""
    _patch_user(name, {"status": "active"}, output, gateway, admin_token, config)


@user_app.command("set-role")
@handle_errors
def user_set_role(name: str, role: Role, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                  admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Change a user's role (viewer, operator or admin); effective on its next request."""
    _patch_user(name, {"role": role.value}, output, gateway, admin_token, config)


# personal tokens --------------------------------------------------------------------------------

@token_app.command("create")
@handle_errors
def token_create(
    user: str,
    name: Annotated[str, typer.Option("--name", help="what the token is for")] = "default",
    expires_in: Annotated[str, typer.Option("--expires-in", help="lifetime, e.g. 30d, 12h (at most 365d)")] = "30d",
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create a personal admin token for USER (yourself, or as an admin); the secret is printed once."""
    with admin_client(gateway, admin_token, config) as client:
        created = client.post(f"/admin/v1/users/{_part(user)}/tokens", {"name": name, "expires_in": expires_in})
    _show_secret(created, output, TOKEN_COLUMNS, {"Personal admin token (shown once, store it now)": "token"})


@token_app.command("list")
@handle_errors
def token_list(user: str, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
               admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """List USER's personal tokens (never their secrets)."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.get(f"/admin/v1/users/{_part(user)}/tokens"), output, columns=TOKEN_COLUMNS)


@token_app.command("revoke")
@handle_errors
def token_revoke(user: str, token_id: str, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                 admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Revoke one of USER's personal tokens: refused from the next request on."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.delete(f"/admin/v1/users/{_part(user)}/tokens/{_part(token_id)}"), output,
               columns=TOKEN_COLUMNS)


# service accounts -------------------------------------------------------------------------------

@service_account_app.command("create")
@handle_errors
def account_create(
    name: str,
    role: Annotated[Role, typer.Option("--role", help="viewer, operator or admin")],
    org: OrgOpt = None,
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create a service account; its client_id and client_secret are printed once."""
    body = {"name": name, "role": role.value} | ({"org": org} if org is not None else {})
    with admin_client(gateway, admin_token, config) as client:
        created = client.post("/admin/v1/service-accounts", body)
    _show_secret(created, output, ACCOUNT_COLUMNS, {"client_id": "client_id",
                                                    "client_secret (shown once, store it now)": "client_secret"})


@service_account_app.command("list")
@handle_errors
def account_list(org: OrgOpt = None, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                 admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """List service accounts (never their secrets)."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.get("/admin/v1/service-accounts", org=org), output, columns=ACCOUNT_COLUMNS)


@service_account_app.command("show")
@handle_errors
def account_show(name: str, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                 admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Show one service account (by name or id)."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.get(f"/admin/v1/service-accounts/{_part(name)}"), output, columns=ACCOUNT_COLUMNS)


def _patch_account(name: str, change: dict[str, str], output: Output, gateway: str | None, token: str | None,
                   config: str | None) -> None:
    _patch("service-accounts", ACCOUNT_COLUMNS, name, change, output, gateway, token, config)


@service_account_app.command("disable")
@handle_errors
def account_disable(name: str, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                    admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Disable a service account: no new tokens, and its current ones are refused at once."""
    _patch_account(name, {"status": "disabled"}, output, gateway, admin_token, config)


@service_account_app.command("enable")
@handle_errors
def account_enable(name: str, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                   admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Enable a disabled service account again."""
    _patch_account(name, {"status": "active"}, output, gateway, admin_token, config)


@service_account_app.command("set-role")
@handle_errors
def account_set_role(name: str, role: Role, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                     admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Change a service account's role; its current tokens carry the new role at once."""
    _patch_account(name, {"role": role.value}, output, gateway, admin_token, config)


@service_account_app.command("rotate-secret")
@handle_errors
def account_rotate_secret(name: str, output: OutputOpt = Output.table, gateway: GatewayOpt = None,
                          admin_token: TokenOpt = None, config: ConfigOpt = None) -> None:
    """Give a service account a new client secret (printed once); the old one and its tokens stop working."""
    with admin_client(gateway, admin_token, config) as client:
        rotated = client.post(f"/admin/v1/service-accounts/{_part(name)}/secret")
    _show_secret(rotated, output, ACCOUNT_COLUMNS, {"client_secret (shown once, store it now)": "client_secret"})


# OAuth2 signing keys ----------------------------------------------------------------------------

@oauth_app.command("keys")
@handle_errors
def oauth_keys(output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
               config: ConfigOpt = None) -> None:
    """List the signing keys: current, retired (still verifying its tokens) or expired."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.get("/admin/v1/oauth2/keys"), output, columns=SIGNING_KEY_COLUMNS)


@oauth_app.command("rotate-key")
@handle_errors
def oauth_rotate_key(output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
                     config: ConfigOpt = None) -> None:
    """Make a new signing key current; tokens of the old one stay valid until they expire."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.post("/admin/v1/oauth2/keys/rotate"), output, columns=(*SIGNING_KEY_COLUMNS, "retired_kid"))


# login ------------------------------------------------------------------------------------------

def _client_secret(from_stdin: bool) -> str:
    """--client-secret-stdin, else $FLEETGATE_CLIENT_SECRET, else a hidden prompt (a terminal only)."""
    if from_stdin:
        secret = sys.stdin.readline().strip()
        if not secret:
            fail("--client-secret-stdin: stdin held no secret")
        return secret
    if os.environ.get(CLIENT_SECRET_ENV):
        return os.environ[CLIENT_SECRET_ENV].strip()
    if not sys.stdin.isatty():
        fail(f"no client secret: pipe it with --client-secret-stdin or set {CLIENT_SECRET_ENV}")
    return typer.prompt("Client secret", hide_input=True).strip()


def _access_token(client: Any, client_id: str, from_stdin: bool) -> tuple[str, str | None]:
    """(access token, its expiry as ISO text) from the gateway's token endpoint."""
    from datetime import UTC, datetime, timedelta

    answer = client.oauth_token(client_id, _client_secret(from_stdin))
    expires_in = answer.get("expires_in")
    if not isinstance(expires_in, int):
        return answer["access_token"], None
    return answer["access_token"], (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat(timespec="seconds")


def _personal_token_expiry(client: Any, me: dict[str, Any], token: str) -> str | None:
    """When a personal token expires: its entry among the user's tokens (matched by display prefix)."""
    if me.get("kind") != "user":
        return None
    tokens = client.get(f"/admin/v1/users/{_part(me['id'])}/tokens")
    return next((t["expires_at"] for t in tokens if t.get("prefix") and token.startswith(t["prefix"])
                 and t.get("status") == "active"), None)


@handle_errors
def login_command(
    client_id: Annotated[str | None, typer.Option(
        "--client-id", help=f"a service account's client_id (default ${CLIENT_ID_ENV})")] = None,
    client_secret_stdin: Annotated[bool, typer.Option(
        "--client-secret-stdin", help=f"read the client secret from stdin (else ${CLIENT_SECRET_ENV}, else a "
                                      "hidden prompt)")] = False,
    with_token: Annotated[bool, typer.Option(
        "--with-token", help="read a personal admin token (fgp_…) from stdin instead")] = False,
    output: OutputOpt = Output.table, gateway: GatewayOpt = None, config: ConfigOpt = None,
) -> None:
    """Log in to the gateway and store the token (file 0600) for every opsctl command and the TUI."""
    from opsctl.client import AdminClient, find_gateway_url
    from opsctl.credentials import Login, save_login

    if with_token and (client_id or client_secret_stdin):
        fail("--with-token cannot be combined with --client-id or --client-secret-stdin")
    url, source = find_gateway_url(load_cli_settings(config), gateway)
    if with_token:
        token, expires_at, client_id = sys.stdin.readline().strip(), None, None
        if not token:
            fail("--with-token: stdin held no token")
    else:
        client_id = client_id or os.environ.get(CLIENT_ID_ENV)
        if not client_id:
            fail(f"pass --client-id (or set {CLIENT_ID_ENV}), or log in with a personal token: --with-token")
        with AdminClient(url, None, source=source) as anonymous:
            token, expires_at = _access_token(anonymous, client_id, client_secret_stdin)
    with AdminClient(url, token, source=source) as client:
        me = client.get("/admin/v1/whoami")  # the token works here, before it is stored
        if with_token:
            expires_at = _personal_token_expiry(client, me, token)
    path = save_login(url, Login(token=token, expires_at=expires_at, kind=me["kind"], client_id=client_id))
    render({"gateway_url": url, "kind": me["kind"], "name": me["name"], "role": me["role"], "org_id": me["org_id"],
            "expires_at": expires_at, "credentials": str(path)}, output, columns=LOGIN_COLUMNS)


@handle_errors
def logout_command(output: OutputOpt = Output.table, gateway: GatewayOpt = None, config: ConfigOpt = None) -> None:
    """Forget the stored login for the gateway (the token itself stays valid until it expires or is revoked)."""
    from opsctl.client import find_gateway_url
    from opsctl.credentials import credentials_path, forget_login

    url, _ = find_gateway_url(load_cli_settings(config), gateway)
    forgotten = forget_login(url)
    render({"gateway_url": url, "logged_out": forgotten, "credentials": str(credentials_path())}, output)


@handle_errors
def whoami_command(output: OutputOpt = Output.table, gateway: GatewayOpt = None, admin_token: TokenOpt = None,
                   config: ConfigOpt = None) -> None:
    """Who the gateway takes you for: kind, name, role and org of the token in use."""
    with admin_client(gateway, admin_token, config) as client:
        render(client.get("/admin/v1/whoami"), output, columns=("kind", "name", "role", "org_id", "actor"))
