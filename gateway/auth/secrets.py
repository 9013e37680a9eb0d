"""API key secrets: generated once, shown once, stored only as a SHA-256 digest.

A key looks like `sk-fg-<43 url-safe chars>`; its display prefix is the first 12 chars.
SHA-256 (not a slow KDF) is right here: the secret has 256 bits of entropy, so there is
nothing to brute-force, and the hot path hashes every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "sk-fg-"
DISPLAY_CHARS = 12


def generate_api_key() -> tuple[str, str, str]:
    """Return (secret, sha256 hex digest, display prefix)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    return secret, hash_api_key(secret), secret[:DISPLAY_CHARS]


def _raw(text: str) -> bytes:
    # aiohttp decodes non-UTF-8 header bytes to lone surrogates; they must hash (and fail), not raise.
    return text.encode("utf-8", "surrogatepass")


def hash_api_key(secret: str) -> str:
    return hashlib.sha256(_raw(secret)).hexdigest()


def generate_admin_token() -> str:
    return "fg-admin-" + secrets.token_urlsafe(32)


def tokens_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets or digests."""
    return hmac.compare_digest(_raw(a), _raw(b))
