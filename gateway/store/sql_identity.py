"""Users, service accounts, personal admin tokens and OAuth2 signing keys (a mixin of `SqlStore`)."""

from __future__ import annotations


class IdentityStore:
    """Needs `self._db`, `self._now()` from `SqlStore`."""
