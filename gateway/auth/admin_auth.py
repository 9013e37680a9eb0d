"""Admin API authentication: a bearer token → a `Principal`.

Three kinds of bearer token are accepted:
- the bootstrap admin token (settings `admin_token`): a global admin, for `opsctl up` and recovery;
- personal admin tokens (`fgp_…`) of users: stored hashed, revocable, with an expiry;
- OAuth2 access tokens (JWTs from `POST /oauth2/token`) of service accounts.
"""

from __future__ import annotations

from gateway.auth.principal import BOOTSTRAP, Principal
from gateway.auth.secrets import tokens_equal
from gateway.errors import AuthenticationFailed
from gateway.settings import Settings
from gateway.store.base import Store


def bearer(header: str) -> str | None:
    """The token of an `Authorization: Bearer …` header, else None."""
    scheme, _, presented = header.partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return None
    return presented


class AdminAuthenticator:
    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store

    async def authenticate(self, header: str) -> Principal:
        """The principal of an Authorization header; AuthenticationFailed (401) for anything else."""
        token = bearer(header)
        if token is None:
            raise AuthenticationFailed("Missing admin credentials: send 'Authorization: Bearer <token>'.",
                                       code="invalid_admin_token")
        bootstrap = self._settings.admin_token
        if bootstrap and tokens_equal(token, bootstrap):
            return BOOTSTRAP
        raise AuthenticationFailed("Invalid, expired or revoked admin token.", code="invalid_admin_token")
