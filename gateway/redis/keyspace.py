"""Every Redis key and channel name the gateway uses, in one place, under one prefix.

Keys that belong to one org carry the hash tag `{org_id}` so an org's keys live in one
Redis Cluster slot (the budget and rate-limit keys are named in gateway/limits/keyspace.py).
"""

from __future__ import annotations


class RedisKeys:
    def __init__(self, prefix: str = "fg") -> None:
        self.prefix = prefix
        self.changes_channel = f"{prefix}:changes"

    def registry_entry(self, environment: str, model: str) -> str:
        """A model's registry entry (JSON), cached with the registry TTL."""
        return f"{self.prefix}:registry:{environment}:{model}"

    def request_nonce(self, key_id: str, nonce: str) -> str:
        """A signed request's nonce, kept for the signature window (gateway/auth/signing.py)."""
        return f"{self.prefix}:nonce:{key_id}:{nonce}"

    def api_key(self, key_hash: str) -> str:
        """A key's auth record (JSON) by the SHA-256 of its secret."""
        return f"{self.prefix}:apikey:{key_hash}"
