"""Record ids: a short kind prefix plus 64 random bits, readable in logs and CLI output.

The prefix tells an operator what an id names (`org_…`, `key_…`) without a lookup.
"""

from __future__ import annotations

import secrets

ORG = "org"
KEY = "key"
MODEL = "mdl"
ENDPOINT = "ep"
BUDGET = "bud"
ROLLOUT = "ro"
USER = "usr"
SERVICE_ACCOUNT = "sa"
ADMIN_TOKEN = "tok"  # a user's personal admin token
SIGNING_KEY = "jwk"  # an OAuth2 signing key (its `kid`)


def new_id(prefix: str) -> str:
    """Return a fresh id such as `org_3f9a0c1d2e4b5a6f` (prefix + 16 hex chars)."""
    return f"{prefix}_{secrets.token_hex(8)}"
