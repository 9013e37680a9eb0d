"""Admin API: users, their personal admin tokens, service accounts, OAuth2 signing keys, and the public
OAuth2 endpoints (`POST /oauth2/token`, `GET /oauth2/jwks.json`).

Secrets (personal tokens, client secrets) are returned once, at creation or rotation, and stored as
SHA-256 only. The token endpoint answers errors in RFC 6749 §5.2's shape, not OpenAI's: OAuth2
clients parse that one.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import orjson
from aiohttp import web

from gateway import appkeys
from gateway.admin import access, auditing
from gateway.admin.common import json_body, reply
from gateway.admin.inputs import duration, field, only_fields, path, query_str
from gateway.admin.orgs import check_name
from gateway.auth.admin_auth import SIGNING_KEY_CHANGED, generate_personal_token
from gateway.auth.oauth import OAuthError, new_client_id, new_client_secret
from gateway.auth.principal import check_role
from gateway.errors import Conflict, InvalidRequest, NotFound, PermissionDenied, json_object
from gateway.http.body import read_body
from gateway.store.models import PRINCIPAL_STATUSES, AdminToken, ServiceAccount, SigningKey, User

USER_FIELDS = ("name", "role", "org", "email")
USER_PATCH_FIELDS = ("role", "status", "email")
TOKEN_FIELDS = ("name", "expires_in")
ACCOUNT_FIELDS = ("name", "role", "org")
ACCOUNT_PATCH_FIELDS = ("role", "status")
DEFAULT_TOKEN_LIFETIME = timedelta(days=30)
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MAX_TOKEN_REQUEST_BYTES = 8192
MAX_TOKEN_REQUEST_FIELDS = 32
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1: token responses are never cached


async def optional_body(request: web.Request) -> dict[str, Any]:
    """A JSON object body, or {} when there is none (actions such as a rotation take no fields)."""
    raw = await read_body(request, request.app[appkeys.SETTINGS])
    return json_object(raw) if raw.strip() else {}


def _role(body: dict[str, Any], *, required: bool) -> str | None:
    role = field(body, "role", str, required=required)
    return None if role is None else check_role(role)


def _status(body: dict[str, Any]) -> str | None:
    return field(body, "status", str, choices=PRINCIPAL_STATUSES)


def _email(body: dict[str, Any]) -> str | None:
    """The email to set; "" when the body clears it with null; None when it is not given."""
    if "email" in body and body["email"] is None:
        return ""
    email = field(body, "email", str)
    if email is not None and not EMAIL_RE.fullmatch(email):
        raise InvalidRequest("'email' must look like name@example.com.", param="email")
    return email


async def _org_id(request: web.Request, body: dict[str, Any]) -> str | None:
    """The org a new user or service account joins, checked against the caller's scope: `org` if given,
    else the caller's own org (None, global, for a global caller)."""
    org_ref = field(body, "org", str)
    if org_ref is None:
        return access.principal(request).org_id
    org_id = (await request.app[appkeys.STORE].get_org(org_ref)).id
    access.check_org(request, org_id)
    return org_id


# users ------------------------------------------------------------------------------------

async def create_user(request: web.Request) -> web.Response:
    """Create a user (global without `org`: only a global admin may)."""
    body = await json_body(request)
    only_fields(body, USER_FIELDS)
    name = check_name(field(body, "name", str, required=True))
    role = _role(body, required=True)
    email = _email(body) or None
    org_id = await _org_id(request, body)
    user = await request.app[appkeys.STORE].create_user(name, role=role, org_id=org_id, email=email)
    await auditing.record(request, "user.create", user.id, org_id=user.org_id, after=user.to_dict())
    return reply(user.to_dict(), status=201)


async def list_users(request: web.Request) -> web.Response:
    """List users (an org caller sees its own org's)."""
    org_id = await access.list_filter(request, query_str(request, "org"))
    return reply([u.to_dict() for u in await request.app[appkeys.STORE].list_users(org_id)])


async def _user(request: web.Request) -> User:
    user = await request.app[appkeys.STORE].get_user(path(request, "user"))
    access.check_org(request, user.org_id)
    return user


async def get_user(request: web.Request) -> web.Response:
    """Show one user (by name or id)."""
    return reply((await _user(request)).to_dict())


async def update_user(request: web.Request) -> web.Response:
    """Change a user's role, status (active|disabled) or email (null clears it); effective at once."""
    body = await json_body(request)
    only_fields(body, USER_PATCH_FIELDS)
    role, status, email = _role(body, required=False), _status(body), _email(body)
    before = await _user(request)
    user = await request.app[appkeys.STORE].update_user(before.id, role=role, status=status, email=email)
    if (user.role, user.status, user.email) != (before.role, before.status, before.email):
        await auditing.record(request, "user.update", user.id, org_id=user.org_id, before=before.to_dict(),
                              after=user.to_dict())
    return reply(user.to_dict())


# personal admin tokens ----------------------------------------------------------------------

async def _token_owner(request: web.Request) -> User:
    """The user whose tokens the request names: the caller itself, or a user an admin may act on."""
    user = await request.app[appkeys.STORE].get_user(path(request, "user"))
    who = access.principal(request)
    if who.kind == "user" and who.id == user.id:
        return user
    if not who.has_role("admin"):
        raise PermissionDenied(f"Only {user.name!r} itself or an admin may manage its personal tokens; "
                               f"{who.actor} has {who.role}.", code="insufficient_role")
    access.check_org(request, user.org_id)
    return user


def token_dict(token: AdminToken) -> dict[str, Any]:
    return token.to_dict() | {"status": token.status(datetime.now(UTC))}


async def create_token(request: web.Request) -> web.Response:
    """Create a personal admin token (expires_in: default 30d); its secret is returned once, as `token`."""
    body = await json_body(request)
    only_fields(body, TOKEN_FIELDS)
    name = check_name(field(body, "name", str, default="default"))
    expires_in = field(body, "expires_in", str)
    max_days = request.app[appkeys.SETTINGS].personal_token_max_days
    lifetime = (DEFAULT_TOKEN_LIFETIME if expires_in is None
                else duration(expires_in, "expires_in", maximum=timedelta(days=max_days)))
    user = await _token_owner(request)
    if user.status != "active":
        raise Conflict(f"user {user.name!r} is disabled: it cannot get a token", param="user")
    secret, token_hash, prefix = generate_personal_token()
    token = await request.app[appkeys.STORE].create_admin_token(
        user.id, name=name, token_hash=token_hash, prefix=prefix, expires_at=datetime.now(UTC) + lifetime)
    await auditing.record(request, "user.token.create", token.id, org_id=user.org_id, after=token_dict(token))
    return reply(token_dict(token) | {"token": secret}, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    """List a user's personal tokens (never their secrets), revoked and expired ones included."""
    user = await _token_owner(request)
    return reply([token_dict(t) for t in await request.app[appkeys.STORE].list_admin_tokens(user.id)])


async def revoke_token(request: web.Request) -> web.Response:
    """Revoke a personal token: refused from the next request on."""
    user = await _token_owner(request)
    store = request.app[appkeys.STORE]
    token_id = path(request, "token_id")
    before = await store.get_admin_token(token_id)
    if before.user_id != user.id:
        raise NotFound(f"admin token {token_id!r} of user {user.name!r} not found", param="token_id")
    token = await store.revoke_admin_token(token_id)
    if before.revoked_at is None:
        await auditing.record(request, "user.token.revoke", token.id, org_id=user.org_id, before=token_dict(before),
                              after=token_dict(token))
    return reply(token_dict(token))


# service accounts ---------------------------------------------------------------------------

async def create_service_account(request: web.Request) -> web.Response:
    """Create a service account; its client_id and client_secret are returned once."""
    body = await json_body(request)
    only_fields(body, ACCOUNT_FIELDS)
    name = check_name(field(body, "name", str, required=True))
    role = _role(body, required=True)
    org_id = await _org_id(request, body)
    secret, secret_hash = new_client_secret()
    account = await request.app[appkeys.STORE].create_service_account(
        name, role=role, org_id=org_id, client_id=new_client_id(), secret_hash=secret_hash)
    await auditing.record(request, "service_account.create", account.id, org_id=org_id, after=account.to_dict())
    return reply(account.to_dict() | {"client_secret": secret}, status=201)


async def list_service_accounts(request: web.Request) -> web.Response:
    """List service accounts (an org caller sees its own org's)."""
    org_id = await access.list_filter(request, query_str(request, "org"))
    return reply([a.to_dict() for a in await request.app[appkeys.STORE].list_service_accounts(org_id)])


async def _service_account(request: web.Request) -> ServiceAccount:
    account = await request.app[appkeys.STORE].get_service_account(path(request, "sa"))
    access.check_org(request, account.org_id)
    return account


async def get_service_account(request: web.Request) -> web.Response:
    """Show one service account (by name or id)."""
    return reply((await _service_account(request)).to_dict())


async def update_service_account(request: web.Request) -> web.Response:
    """Change a service account's role or status; its access tokens follow at once."""
    body = await json_body(request)
    only_fields(body, ACCOUNT_PATCH_FIELDS)
    role, status = _role(body, required=False), _status(body)
    before = await _service_account(request)
    account = await request.app[appkeys.STORE].update_service_account(before.id, role=role, status=status)
    if (account.role, account.status) != (before.role, before.status):
        await auditing.record(request, "service_account.update", account.id, org_id=account.org_id,
                              before=before.to_dict(), after=account.to_dict())
    return reply(account.to_dict())


async def rotate_secret(request: web.Request) -> web.Response:
    """Give a service account a new client secret (returned once); the old one and every access token
    issued before are refused at once."""
    only_fields(await optional_body(request), ())
    before = await _service_account(request)
    secret, secret_hash = new_client_secret()
    account = await request.app[appkeys.STORE].set_service_account_secret(before.id, secret_hash)
    await auditing.record(request, "service_account.rotate_secret", account.id, org_id=account.org_id,
                          before=before.to_dict(), after=account.to_dict())
    return reply(account.to_dict() | {"client_secret": secret})


# OAuth2 signing keys ------------------------------------------------------------------------

def key_dict(request: web.Request, key: SigningKey) -> dict[str, Any]:
    """A key as operators see it: never its private half. status: current | retired (still verifies) | expired."""
    oauth = request.app[appkeys.ADMIN_AUTH].oauth
    until = oauth.verifies_until(key.retired_at)
    status = "current" if until is None else "retired" if datetime.now(UTC) <= until else "expired"
    return {"kid": key.kid, "algorithm": key.algorithm, "created_at": key.created_at.isoformat(),
            "retired_at": None if key.retired_at is None else key.retired_at.isoformat(),
            "verifies_until": None if until is None else until.isoformat(), "status": status}


async def list_keys(request: web.Request) -> web.Response:
    """List the OAuth2 signing keys, newest first (public facts only)."""
    keys = await request.app[appkeys.STORE].list_signing_keys()
    return reply([key_dict(request, k) for k in keys])


async def rotate_key(request: web.Request) -> web.Response:
    """Make a new signing key current; the old one verifies its tokens until they have expired."""
    only_fields(await optional_body(request), ())
    previous, key = await request.app[appkeys.ADMIN_AUTH].oauth.rotate()
    await request.app[appkeys.BUS].publish(SIGNING_KEY_CHANGED, {"kid": key.kid})
    await auditing.record(request, "oauth2.key.rotate", key.kid,
                          before=None if previous is None else key_dict(request, previous),
                          after=key_dict(request, key))
    return reply(key_dict(request, key) | {"retired_kid": None if previous is None else previous.kid})


# public OAuth2 endpoints --------------------------------------------------------------------

def oauth_error(error: OAuthError) -> web.Response:
    headers = dict(NO_STORE)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="fleetgate"'
    return web.Response(body=orjson.dumps(error.to_dict()), status=error.status, content_type="application/json",
                        headers=headers)


async def _form(request: web.Request) -> dict[str, str]:
    """The token request's parameters (RFC 6749 §4.4.2: form-encoded, each at most once)."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "The body must be application/x-www-form-urlencoded.")
    raw = await read_body(request, request.app[appkeys.SETTINGS])
    if len(raw) > MAX_TOKEN_REQUEST_BYTES:
        raise OAuthError("invalid_request", f"The body must be at most {MAX_TOKEN_REQUEST_BYTES} bytes.")
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_TOKEN_REQUEST_FIELDS,
                          errors="strict")
    except (UnicodeDecodeError, ValueError) as e:
        raise OAuthError("invalid_request", "The body is not a valid form (UTF-8, at most "
                                            f"{MAX_TOKEN_REQUEST_FIELDS} parameters).") from e
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise OAuthError("invalid_request", f"Parameter {name[:64]!r} is given more than once.")
        params[name] = value
    return params


def _client_credentials(request: web.Request, params: dict[str, str]) -> tuple[str, str]:
    """(client_id, client_secret) from HTTP Basic or the body — exactly one of the two (RFC 6749 §2.3.1)."""
    header = request.headers.get("Authorization")
    if header is None:
        client_id, secret = params.get("client_id"), params.get("client_secret")
        if not client_id or not secret:
            raise OAuthError("invalid_client", "Client authentication is required: HTTP Basic, or client_id and "
                                               "client_secret in the body.", 401)
        return client_id, secret
    if "client_secret" in params:
        raise OAuthError("invalid_request", "Use one client authentication method: HTTP Basic or the body.")
    scheme, _, encoded = header.partition(" ")
    try:
        if scheme.lower() != "basic":
            raise ValueError("not Basic")
        client_id, colon, secret = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, binascii.Error, UnicodeDecodeError) as e:
        raise OAuthError("invalid_client", "The Authorization header must be HTTP Basic with "
                                           "client_id:client_secret.", 401) from e
    client_id, secret = unquote_plus(client_id), unquote_plus(secret)
    if not colon or not client_id or not secret:
        raise OAuthError("invalid_client", "HTTP Basic credentials must be client_id:client_secret.", 401)
    if params.get("client_id", client_id) != client_id:
        raise OAuthError("invalid_request", "client_id in the body differs from the one in HTTP Basic.")
    return client_id, secret


async def token(request: web.Request) -> web.Response:
    """OAuth2 token endpoint: the client-credentials grant issues a service account's access token."""
    settings = request.app[appkeys.SETTINGS]
    oauth = request.app[appkeys.ADMIN_AUTH].oauth
    try:
        params = await _form(request)
        grant = params.get("grant_type")
        if not grant:
            raise OAuthError("invalid_request", "grant_type is required (client_credentials).")
        if grant != "client_credentials":
            raise OAuthError("unsupported_grant_type", "Only the client_credentials grant is supported.")
        client_id, secret = _client_credentials(request, params)
        audience = params.get("audience")
        if audience is not None and audience != settings.oauth_audience:
            raise OAuthError("invalid_target", f"This gateway issues tokens for audience "
                                               f"{settings.oauth_audience!r} only.")
        if params.get("scope"):
            raise OAuthError("invalid_scope", "Scopes are not used: a token carries its service account's role.")
        account = await oauth.authenticate_client(client_id, secret)
        access_token = await oauth.issue(account)
    except OAuthError as e:
        return oauth_error(e)
    return web.Response(body=orjson.dumps({"access_token": access_token, "token_type": "Bearer",
                                           "expires_in": oauth.ttl_s}),
                        content_type="application/json", headers=NO_STORE)


async def jwks(request: web.Request) -> web.Response:
    """The public keys that verify this gateway's access tokens (JSON Web Key Set)."""
    keys = await request.app[appkeys.ADMIN_AUTH].oauth.jwks()
    return web.Response(body=orjson.dumps(keys), content_type="application/json",
                        headers={"Cache-Control": "public, max-age=60"})


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/admin/v1/users", create_user)
    r.add_get("/admin/v1/users", list_users)
    r.add_get("/admin/v1/users/{user}", get_user)
    r.add_patch("/admin/v1/users/{user}", update_user)
    r.add_post("/admin/v1/users/{user}/tokens", create_token)
    r.add_get("/admin/v1/users/{user}/tokens", list_tokens)
    r.add_delete("/admin/v1/users/{user}/tokens/{token_id}", revoke_token)
    r.add_post("/admin/v1/service-accounts", create_service_account)
    r.add_get("/admin/v1/service-accounts", list_service_accounts)
    r.add_get("/admin/v1/service-accounts/{sa}", get_service_account)
    r.add_patch("/admin/v1/service-accounts/{sa}", update_service_account)
    r.add_post("/admin/v1/service-accounts/{sa}/secret", rotate_secret)
    r.add_get("/admin/v1/oauth2/keys", list_keys)
    r.add_post("/admin/v1/oauth2/keys/rotate", rotate_key)
    r.add_post("/oauth2/token", token)
    r.add_get("/oauth2/jwks.json", jwks)
