"""OAuth2 for service accounts: the client-credentials grant issues short-lived JWT access tokens.

Tokens are signed with Ed25519 (`EdDSA`) keys kept in the store, named by `kid` in the token header,
so every replica verifies what any replica issued. Rotation makes a new key sign at once; a retired
key still verifies the tokens it signed until those could have expired (retired_at + ttl + leeway),
and is refused after that. Verification reads the service account's row, so disabling it, changing
its role or rotating its secret takes effect on the next request.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm

from gateway.auth.principal import Principal
from gateway.auth.secrets import hash_api_key, tokens_equal
from gateway.errors import AuthenticationFailed, NotFound
from gateway.settings import Settings
from gateway.store import ids
from gateway.store.base import Store
from gateway.store.models import ServiceAccount, SigningKey

ALGORITHM = "EdDSA"
CLIENT_ID_PREFIX = "fgc_"
CLIENT_SECRET_PREFIX = "fgs_"
CLIENT_ID_RE = re.compile(r"fgc_[0-9a-f]{24}", re.ASCII)
# Public keys are re-read this often (and at once when the change bus announces a rotation), so a
# rotation made by another replica is seen within it; an unknown kid re-reads sooner, but at most
# this often, so made-up kids cannot flood the store.
KEY_RELOAD_S = 10.0
UNKNOWN_KID_RELOAD_S = 1.0
# `secret_rotated_at`: the client secret the token was issued for; a rotation ends the tokens of the old one.
REQUIRED_CLAIMS = ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "secret_rotated_at"]


def new_client_id() -> str:
    return CLIENT_ID_PREFIX + secrets.token_hex(12)


def new_client_secret() -> tuple[str, str]:
    """A client secret (256 random bits, shown once) and its SHA-256, the only thing stored."""
    secret = CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)
    return secret, hash_api_key(secret)


class OAuthError(Exception):
    """An RFC 6749 §5.2 error of the token endpoint: `{"error": …, "error_description": …}` with 400 or 401."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def to_dict(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def refused(message: str) -> AuthenticationFailed:
    return AuthenticationFailed(message, code="invalid_admin_token")


def _new_key_material() -> tuple[str, str, dict[str, Any]]:
    """(kid, private key PEM, public JWK) of a fresh Ed25519 key."""
    kid = ids.new_id(ids.SIGNING_KEY)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    jwk = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True) | {"kid": kid, "alg": ALGORITHM, "use": "sig"}
    return kid, pem, jwk


def _current(keys: list[SigningKey]) -> SigningKey | None:
    """The key that signs: the unretired one of our algorithm."""
    return next((k for k in keys if k.retired_at is None and k.algorithm == ALGORITHM), None)


@dataclass(frozen=True, slots=True)
class _VerifyingKey:
    public: Ed25519PublicKey
    retired_at: datetime | None


class OAuthTokens:
    """Issues and verifies access tokens; owns the signing keys' cache.

    Args:
        settings: issuer, audience, token lifetime and clock leeway.
        store: service accounts and signing keys.
        clock: seconds since the epoch (time.time).
    """

    def __init__(self, settings: Settings, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._keys: dict[str, _VerifyingKey] = {}
        self._loaded_at = -math.inf  # time.monotonic() of the last read of the keys
        self._reload_lock = asyncio.Lock()
        self._private: dict[str, Ed25519PrivateKey] = {}

    @property
    def ttl_s(self) -> int:
        return self._settings.oauth_token_ttl_s

    def verifies_until(self, retired_at: datetime | None) -> datetime | None:
        """When a key retired at `retired_at` stops verifying: its last token has expired by then."""
        if retired_at is None:
            return None
        return retired_at + timedelta(seconds=self.ttl_s + self._settings.oauth_leeway_s)

    # client authentication and issuing ---------------------------------------------------

    async def authenticate_client(self, client_id: str, secret: str) -> ServiceAccount:
        """The active service account with these credentials.

        Raises:
            OAuthError: invalid_client (401), one message for an unknown id and a wrong secret.
        """
        account = None
        if CLIENT_ID_RE.fullmatch(client_id):
            account = await self._store.find_service_account_by_client_id(client_id)
        if account is None or not tokens_equal(hash_api_key(secret), account.secret_hash):
            raise OAuthError("invalid_client", "Client authentication failed: unknown client_id or wrong "
                                               "client_secret.", 401)
        if account.status != "active":
            raise OAuthError("invalid_client", f"Service account {account.name!r} is disabled.", 401)
        return account

    async def issue(self, account: ServiceAccount) -> str:
        """A signed access token for `account`, valid for `ttl_s` from now."""
        key = await self._signing_key()
        now = int(self._clock())
        claims = {
            "iss": self._settings.oauth_issuer, "sub": account.id, "aud": self._settings.oauth_audience,
            "iat": now, "nbf": now, "exp": now + self.ttl_s, "jti": secrets.token_urlsafe(16),
            "role": account.role, "org_id": account.org_id, "name": account.name, "client_id": account.client_id,
            "secret_rotated_at": account.secret_rotated_at.isoformat(),
        }
        if key.kid not in self._keys:
            self.forget_keys()  # a key another replica made: this one verifies what it issues at once
        return jwt.encode(claims, self._private_key(key), algorithm=ALGORITHM, headers={"kid": key.kid})

    async def _signing_key(self) -> SigningKey:
        """The current key, created on first use (every replica agrees on it: see `Store.add_signing_key`)."""
        current = _current(await self._store.list_signing_keys())
        if current is None:
            kid, pem, jwk = _new_key_material()
            current = await self._store.add_signing_key(kid, algorithm=ALGORITHM, private_pem=pem, public_jwk=jwk)
        return current

    def _private_key(self, key: SigningKey) -> Ed25519PrivateKey:
        private = self._private.get(key.kid)
        if private is None:
            loaded = serialization.load_pem_private_key(key.private_pem.encode(), password=None)
            assert isinstance(loaded, Ed25519PrivateKey)  # only EdDSA keys are ever stored
            self._private = {key.kid: loaded}  # one current key at a time
            private = loaded
        return private

    # keys -------------------------------------------------------------------------------

    async def rotate(self) -> tuple[SigningKey | None, SigningKey]:
        """Make a new key current; return (the key it retired, if any, the new key)."""
        previous = _current(await self._store.list_signing_keys())
        kid, pem, jwk = _new_key_material()
        new = await self._store.rotate_signing_key(kid, algorithm=ALGORITHM, private_pem=pem, public_jwk=jwk)
        self.forget_keys()  # this replica sees the rotation at once; others hear of it on the change bus
        return previous, new

    def forget_keys(self) -> None:
        """Re-read the public keys on the next verification."""
        self._loaded_at = -math.inf

    async def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set: public keys that still verify tokens (the current one first)."""
        await self._signing_key()
        now = datetime.fromtimestamp(self._clock(), UTC)
        keys = [k.public_jwk for k in await self._store.list_signing_keys()
                if (until := self.verifies_until(k.retired_at)) is None or now <= until]
        return {"keys": keys}

    async def _verifying_key(self, kid: str) -> _VerifyingKey | None:
        loaded_at = self._loaded_at
        age = time.monotonic() - loaded_at
        if age > KEY_RELOAD_S or (kid not in self._keys and age > UNKNOWN_KID_RELOAD_S):
            async with self._reload_lock:
                if self._loaded_at == loaded_at:  # nobody reloaded while this request waited for the lock
                    await self._reload()
        return self._keys.get(kid)

    async def _reload(self) -> None:
        keys: dict[str, _VerifyingKey] = {}
        for key in await self._store.list_signing_keys():
            if key.algorithm != ALGORITHM:
                continue
            public = OKPAlgorithm.from_jwk(key.public_jwk)
            assert isinstance(public, Ed25519PublicKey)  # from_jwk of a public JWK
            keys[key.kid] = _VerifyingKey(public, key.retired_at)
        self._keys = keys
        self._loaded_at = time.monotonic()

    # verifying --------------------------------------------------------------------------

    async def verify(self, token: str) -> Principal:
        """The service account principal of an access token.

        Raises:
            AuthenticationFailed: 401 with one clear reason (expired, wrong audience, unknown or retired key,
                bad signature, disabled account); the token itself is never echoed.
        """
        if not token.isascii():  # a JWT is base64url and dots; PyJWT would fail to encode lone surrogates
            raise refused("The access token is malformed.")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as e:
            raise refused("The access token is malformed.") from e
        if not isinstance(kid, str):
            raise refused("The access token names no signing key (kid).")
        key = await self._verifying_key(kid)
        if key is None:
            raise refused("The access token is signed with an unknown key: it was not issued by this gateway's "
                          "POST /oauth2/token.")
        claims = self._decode(token, key)
        until = self.verifies_until(key.retired_at)
        if until is not None and datetime.fromtimestamp(self._clock(), UTC) > until:
            # No token it signed can still be valid: this one was made after the rotation, with a retired key.
            raise refused("The access token is signed with a retired key: get a new token (opsctl login).")
        return await self._principal(claims)

    def _decode(self, token: str, key: _VerifyingKey) -> dict[str, Any]:
        settings = self._settings
        try:
            return jwt.decode(token, key.public, algorithms=[ALGORITHM], audience=settings.oauth_audience,
                              issuer=settings.oauth_issuer, leeway=settings.oauth_leeway_s,
                              options={"require": REQUIRED_CLAIMS})
        except jwt.ExpiredSignatureError as e:
            raise refused("The access token has expired: get a new one from POST /oauth2/token "
                          "(opsctl login).") from e
        except jwt.InvalidAudienceError as e:
            raise refused(f"The access token is for another audience: this gateway accepts "
                          f"{settings.oauth_audience!r}.") from e
        except jwt.InvalidIssuerError as e:
            raise refused(f"The access token is from another issuer: this gateway accepts "
                          f"{settings.oauth_issuer!r}.") from e
        except jwt.ImmatureSignatureError as e:
            raise refused("The access token is not valid yet (nbf/iat in the future): check the clocks.") from e
        except jwt.InvalidSignatureError as e:
            raise refused("The access token's signature is invalid.") from e
        except jwt.PyJWTError as e:
            raise refused("The access token is invalid (a required claim is missing or malformed).") from e

    async def _principal(self, claims: dict[str, Any]) -> Principal:
        subject = claims["sub"]
        try:
            account = await self._store.get_service_account(subject)
        except NotFound as e:
            raise refused("The access token's service account no longer exists.") from e
        if account.id != subject:  # `sub` is always an id; a name that happens to match is not it
            raise refused("The access token's service account no longer exists.")
        if account.status != "active":
            raise refused(f"Service account {account.name!r} is disabled.")
        if claims["secret_rotated_at"] != account.secret_rotated_at.isoformat():
            raise refused(f"The access token was issued before service account {account.name!r}'s secret was "
                          "rotated: get a new one.")
        return Principal(kind="service_account", id=account.id, name=account.name, role=account.role,
                         org_id=account.org_id, token_id=str(claims["jti"]))
