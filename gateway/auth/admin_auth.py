"""Admin API authentication: a bearer token → a `Principal`.

Three kinds of bearer token are accepted:
- the bootstrap admin token (settings `admin_token`): a global admin, for `opsctl up` and recovery;
- personal admin tokens (`fgp_…`) of users: stored hashed, revocable, with an expiry;
- OAuth2 access tokens (JWTs from `POST /oauth2/token`) of service accounts (gateway.auth.oauth).
Each refusal is a 401 with one clear reason; the presented token is never echoed or logged.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.auth.oauth import OAuthTokens, refused
from gateway.auth.principal import BOOTSTRAP, Principal
from gateway.auth.secrets import hash_api_key, tokens_equal
from gateway.redis.bus import RESYNC
from gateway.settings import Settings
from gateway.store.base import Store

PERSONAL_TOKEN_PREFIX = "fgp_"
SIGNING_KEY_CHANGED = "signing_key"  # change-bus kind: a signing key was rotated
DISPLAY_CHARS = 12
# last_used_at is written at most this often per token: an admin session must not write on every call.
TOUCH_INTERVAL = timedelta(seconds=60)


def generate_personal_token() -> tuple[str, str, str]:
    """Return (secret, sha256 hex digest, display prefix) of a new personal admin token."""
    secret = PERSONAL_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return secret, hash_api_key(secret), secret[:DISPLAY_CHARS]


def bearer(header: str) -> str | None:
    """The token of an `Authorization: Bearer …` header, else None."""
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return None
    return presented


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def utc_now() -> datetime:
    return datetime.now(UTC)


class AdminAuthenticator:
    """Turns admin bearer tokens into principals; `oauth` also serves the token endpoint and key rotation."""

    def __init__(self, settings: Settings, store: Store, *, now: Callable[[], datetime] = utc_now) -> None:
        self._settings = settings
        self._store = store
        self._now = now
        self.oauth = OAuthTokens(settings, store, clock=lambda: now().timestamp())

    async def authenticate(self, header: str) -> Principal:
        """The principal of an Authorization header; AuthenticationFailed (401) for anything else."""
        token = bearer(header)
        if token is None:
            raise refused("Missing admin credentials: send 'Authorization: Bearer <token>'.")
        bootstrap = self._settings.admin_token
        if bootstrap and tokens_equal(token, bootstrap):
            return BOOTSTRAP
        if token.startswith(PERSONAL_TOKEN_PREFIX):
            return await self._personal(token)
        if _looks_like_jwt(token):
            return await self.oauth.verify(token)
        raise refused("Invalid, expired or revoked admin token.")

    async def on_change(self, kind: str, payload: dict[str, Any]) -> None:
        """Change-bus handler: a rotation elsewhere (or a bus reconnect) re-reads the signing keys."""
        if kind in (SIGNING_KEY_CHANGED, RESYNC):
            self.oauth.forget_keys()

    async def _personal(self, secret: str) -> Principal:
        token = await self._store.find_admin_token_by_hash(hash_api_key(secret))
        if token is None:
            raise refused("Invalid personal admin token: no such token.")
        now = self._now()
        if token.revoked_at is not None:
            raise refused("The personal admin token was revoked.")
        if now >= token.expires_at:
            raise refused("The personal admin token has expired: create a new one (opsctl user token create).")
        user = await self._store.get_user(token.user_id)
        if user.status != "active":
            raise refused(f"User {user.name!r} is disabled.")
        if token.last_used_at is None or now - token.last_used_at >= TOUCH_INTERVAL:
            await self._store.touch_admin_token(token.id, now)
        return Principal(kind="user", id=user.id, name=user.name, role=user.role, org_id=user.org_id,
                         token_id=token.id)
